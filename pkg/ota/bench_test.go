package ota_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/device/emulator"
	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/ota/bundle"
	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/serial"
)

// BenchmarkPushSerial115200 pushes a bundle to the emulator over a serial
// pty paced at 115200 baud 8N1 (11,520 bytes/s each way), with mos's
// 512-byte chunks and with otactl's default (the largest that fits the
// device's frame limit). Compare the MB/s of the two sub-benchmarks: run
// with `make bench` or
//
//	go test -run='^$' -bench=PushSerial -benchtime=2x ./pkg/ota/
func BenchmarkPushSerial115200(b *testing.B) {
	for _, bc := range []struct {
		name  string
		chunk int
	}{{"chunk=512", 512}, {"chunk=auto", 0}} {
		b.Run(bc.name, func(b *testing.B) { benchPushSerial(b, bc.chunk) })
	}
}

func benchPushSerial(b *testing.B, chunk int) {
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

	app := make([]byte, 24<<10)
	_, _ = rand.Read(app)
	var buf bytes.Buffer
	m := &bundle.Manifest{Name: "bench", Platform: "esp32", Version: "2.0.0", BuildID: "bench"}
	if err := bundle.Create(&buf, m, []bundle.PartData{bundle.BytesData("app", bundle.Part{Type: "app", Src: "app.bin"}, app)}, nil); err != nil {
		b.Fatal(err)
	}
	fw := buf.Bytes()
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
	b.ReportMetric(float64(used), "chunk-bytes")
	b.ReportMetric(float64(len(fw))*float64(b.N)/b.Elapsed().Seconds()/1000, "kB/s")
}
