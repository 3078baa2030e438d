package ota_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/device/emulator"
	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/ota/bundle"
	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/all"
	"github.com/otactl/otactl/pkg/transport/mqtt/mqtttest"
	"github.com/otactl/otactl/pkg/transport/serial"
)

// BenchmarkPushSerial115200 pushes a bundle to the emulator over a serial
// pty paced at 115200 baud 8N1 (11,520 bytes/s each way), with mos's
// 512-byte chunks and with otactl's default (the largest that fits the
// device's frame limit). Compare the MB/s of the two sub-benchmarks: run
// with `make bench` or
//
//	go test -run='^$' -bench=PushSerial -benchtime=2x ./pkg/ota/
//
// "ceiling-ratio" compares the rate with the most the line can carry with
// that chunk size (serialCeiling): 1.0 would be a line never idle.
func BenchmarkPushSerial115200(b *testing.B) {
	for _, bc := range []struct {
		name  string
		chunk int
		app   int
	}{{"chunk=512", 512, 24 << 10}, {"chunk=auto", 0, 24 << 10}, {"chunk=auto/app=96KiB", 0, 96 << 10}} {
		b.Run(bc.name, func(b *testing.B) { benchPushSerial(b, bc.chunk, bc.app) })
	}
}

func benchPushSerial(b *testing.B, chunk, appSize int) {
	ctx := context.Background()
	dir := b.TempDir()
	link := filepath.Join(dir, "tty")
	d, err := emulator.New(emulator.Config{StateDir: filepath.Join(dir, "flash"), SerialLink: link,
		SerialBaud: 115200, RebootDelay: 10 * time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	if err := d.Start(ctx); err != nil {
		b.Fatal(err)
	}
	defer d.Close()

	fw := benchBundle(b, appSize)
	dial := func(ctx context.Context) (*rpc.Client, error) {
		conn, err := serial.Dial(ctx, &url.URL{Scheme: "serial", Path: link}, transport.Options{})
		if err != nil {
			return nil, err
		}
		return rpc.NewClient(conn, rpc.ClientOptions{}), nil
	}
	env := ota.Envelope{Src: rpc.DefaultSrc}
	b.SetBytes(int64(len(fw)))
	b.ResetTimer()
	var used int
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		tctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		c, err := dial(tctx)
		if err != nil {
			b.Fatal(err)
		}
		dev := ota.New(c)
		before, err := dev.Observe(tctx)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		res, err := dev.Push(tctx, bytes.NewReader(fw), int64(len(fw)), ota.PushOptions{
			ChunkSize: chunk, FrameLimit: frame.MaxSize - 16, Envelope: &env})
		b.StopTimer()
		c.Close()
		if err != nil {
			b.Fatal(err)
		}
		used = res.ChunkSize
		out, c2, err := ota.WaitOutcome(tctx, ota.WaitOptions{Dial: dial, Before: before, Accepted: res.Confirmed})
		if err != nil {
			b.Fatal(err)
		}
		if err := ota.New(c2).Commit(tctx); err != nil {
			b.Fatalf("commit after %s: %v", out.Result, err)
		}
		c2.Close()
		cancel()
	}
	rate := float64(len(fw)) * float64(b.N) / b.Elapsed().Seconds()
	b.ReportMetric(float64(used), "chunk-bytes")
	b.ReportMetric(rate/1000, "kB/s")
	b.ReportMetric(rate/serialCeiling(115200, used, int64(len(fw)), env), "ceiling-ratio")
}

// serialCeiling is the most bundle bytes a second that a push can send
// over a serial line at baud (8N1: baud/10 bytes a second) in chunks of
// chunk bytes: the line busy with nothing but OTA.Write frames, each
// carrying chunk bytes as base64 (4/3) inside its JSON frame, with the
// serial CRC and delimiters (serial.EncodeFrame). Replies travel the other
// way and cost the outbound line nothing; waiting for them, and the other
// calls of a push, is what keeps a real push below this.
func serialCeiling(baud, chunk int, size int64, env ota.Envelope) float64 {
	f := ota.WriteFrame(env, size-1, make([]byte, chunk))
	f.ID = rpc.NewID() // as large as the ids the client uses
	js, err := frame.Marshal(f)
	if err != nil {
		panic(err)
	}
	return float64(baud) / 10 * float64(chunk) / float64(len(serial.EncodeFrame(js)))
}

// BenchmarkPushNetwork pushes a 256 KiB bundle to the emulator over the
// network transports on loopback, one OTA.Write per round trip (window=1,
// what push did before --window) and with several in flight: through a
// real mosquitto (OTACTL_TEST_MOSQUITTO, which `make bench` sets via
// scripts/with-mosquitto.sh; skipped without it) with 1 to 32, the
// measurement behind ota.DefaultWindow; through an in-process mochi broker,
// WebSocket and HTTP with 1 and their defaults. Compare the kB/s of the
// sub-benchmarks of one run:
//
//	scripts/with-mosquitto.sh go test -run='^$' -bench=PushNetwork -benchtime=3x ./pkg/ota/
func BenchmarkPushNetwork(b *testing.B) {
	for _, bc := range []struct {
		tr      string
		windows []int
	}{
		{"mosquitto", []int{1, 2, 4, 8, 16, 32}},
		{"mochi", []int{1, ota.DefaultWindow}},
		{"ws", []int{1, ota.DefaultWindow}},
		{"http", []int{1, ota.DefaultHTTPWindow}},
	} {
		for _, w := range bc.windows {
			b.Run(fmt.Sprintf("transport=%s/window=%d", bc.tr, w), func(b *testing.B) { benchPushNetwork(b, bc.tr, w) })
		}
	}
}

func benchPushNetwork(b *testing.B, tr string, window int) {
	ctx := context.Background()
	dir := b.TempDir()
	id := "bench-" + strings.ToLower(rand.Text()[:12])
	cfg := emulator.Config{StateDir: filepath.Join(dir, "flash"), ID: id, RebootDelay: 10 * time.Millisecond, RebootAfter: 10 * time.Millisecond}
	switch tr {
	case "mosquitto":
		cfg.MQTTBroker = mqtttest.Mosquitto(b)
	case "mochi":
		cfg.MQTTBroker = mqtttest.StartBroker(b)
	default:
		cfg.Listen = "127.0.0.1:0"
	}
	d, err := emulator.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	if err := d.Start(ctx); err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	var port string
	for _, l := range d.Listeners() {
		if l.Transport == tr || (l.Transport == "mqtt" && (tr == "mosquitto" || tr == "mochi")) {
			port = l.Addr
		}
	}
	fw := benchBundle(b, 256<<10)
	reg := all.NewRegistry()
	dial := func(ctx context.Context) (*rpc.Client, error) {
		conn, err := reg.Dial(ctx, port, transport.Options{})
		if err != nil {
			return nil, err
		}
		return rpc.NewClient(conn, rpc.ClientOptions{}), nil
	}
	b.SetBytes(int64(len(fw)))
	retries := 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		tctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		c, err := dial(tctx)
		if err != nil {
			b.Fatal(err)
		}
		dev := ota.New(c)
		before, err := dev.Observe(tctx)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		res, err := dev.Push(tctx, bytes.NewReader(fw), int64(len(fw)), ota.PushOptions{Window: window})
		b.StopTimer()
		retries += res.Retries
		c.Close()
		if err != nil {
			b.Fatal(err)
		}
		out, c2, err := ota.WaitOutcome(tctx, ota.WaitOptions{Dial: dial, Before: before, Accepted: res.Confirmed})
		if err != nil {
			b.Fatal(err)
		}
		if err := ota.New(c2).Commit(tctx); err != nil {
			b.Fatalf("commit after %s: %v", out.Result, err)
		}
		c2.Close()
		cancel()
	}
	b.ReportMetric(float64(len(fw))*float64(b.N)/b.Elapsed().Seconds()/1000, "kB/s")
	b.ReportMetric(float64(retries)/float64(b.N), "retries/op")
}

// benchBundle returns a bundle whose app part is size random bytes.
func benchBundle(b testing.TB, size int) []byte {
	app := make([]byte, size)
	_, _ = rand.Read(app)
	var buf bytes.Buffer
	m := &bundle.Manifest{Name: "bench", Platform: "esp32", Version: "2.0.0", BuildID: "bench"}
	if err := bundle.Create(&buf, m, []bundle.PartData{bundle.BytesData("app", bundle.Part{Type: "app", Src: "app.bin"}, app)}, nil); err != nil {
		b.Fatal(err)
	}
	return buf.Bytes()
}
