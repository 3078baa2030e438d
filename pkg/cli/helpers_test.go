package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/device/emulator"
	"github.com/otactl/otactl/pkg/ota/bundle"
	"github.com/otactl/otactl/pkg/rpc"
	httptransport "github.com/otactl/otactl/pkg/transport/http"
	"github.com/otactl/otactl/pkg/transport/mqtt/mqtttest"
	"github.com/spf13/cobra"
)

// startDevice serves an rpc.Server over the real HTTP device side on loopback.
func startDevice(t *testing.T) string {
	t.Helper()
	s := rpc.NewServer("dev1")
	s.Handle("Sys.GetInfo", func(ctx context.Context, r *rpc.Request) (any, error) {
		return map[string]any{"id": "dev1", "fw_version": "1.0", "args": r.Params}, nil
	})
	s.Handle("OTA.Commit", func(ctx context.Context, r *rpc.Request) (any, error) {
		return nil, &rpc.Error{Code: -1}
	})
	s.Handle("Slow", func(ctx context.Context, r *rpc.Request) (any, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	srv := httptest.NewServer(httptransport.NewHandler(s, httptransport.HandlerOptions{}))
	t.Cleanup(srv.Close)
	return srv.URL + "/rpc"
}

type result struct {
	code           int
	stdout, stderr string
}

func run(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	ios := &IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}
	code := Main(args, ios, func(k string) string { return env[k] })
	return result{code, out.String(), errOut.String()}
}

func jsonDoc(t *testing.T, s string) map[string]any {
	t.Helper()
	var doc map[string]any
	if err := json.Unmarshal([]byte(s), &doc); err != nil {
		t.Fatalf("not one JSON document: %q", s)
	}
	return doc
}

func writeTestBundle(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "fw.zip")
	m := &bundle.Manifest{Name: "app", Platform: "esp32", Version: "2.0", BuildID: "b2"}
	parts := []bundle.PartData{
		bundle.BytesData("app", bundle.Part{Type: "app", Src: "app.bin"}, bytes.Repeat([]byte("fw"), 5000)),
	}
	if err := bundle.CreateFile(path, m, parts, nil); err != nil {
		t.Fatal(err)
	}
	return path
}

// pushBundle writes a bundle of version with an app part of size random
// bytes.
func pushBundle(t *testing.T, version string, size int) string {
	t.Helper()
	app := make([]byte, size)
	_, _ = rand.Read(app)
	path := filepath.Join(t.TempDir(), "fw-"+version+".zip")
	m := &bundle.Manifest{Name: "app", Platform: "esp32", Version: version, BuildID: "b" + version}
	if err := bundle.CreateFile(path, m, []bundle.PartData{bundle.BytesData("app", bundle.Part{Type: "app", Src: "app.bin"}, app)}, nil); err != nil {
		t.Fatal(err)
	}
	return path
}

// startEmulator starts an emulated device reachable over tr ("http", "ws",
// "serial" or "mqtt"; "none": only mod's listeners) and returns it with its
// --port. mod may change the configuration.
func startEmulator(t *testing.T, tr string, mod func(*emulator.Config)) (*emulator.Device, string) {
	t.Helper()
	dir := t.TempDir()
	cfg := emulator.Config{StateDir: filepath.Join(dir, "flash"), RebootAfter: 10 * time.Millisecond, RebootDelay: 300 * time.Millisecond}
	switch tr {
	case "http", "ws":
		cfg.Listen = "127.0.0.1:0"
	case "serial":
		cfg.SerialLink = filepath.Join(dir, "tty")
	case "mqtt":
		cfg.MQTTBroker = mqtttest.StartBroker(t)
	}
	if mod != nil {
		mod(&cfg)
	}
	d, err := emulator.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	for _, l := range d.Listeners() {
		if l.Transport == tr {
			return d, l.Addr
		}
	}
	if tr != "none" {
		t.Fatalf("no %s listener", tr)
	}
	return d, ""
}

func htdigestFile(t *testing.T, alg string, users map[string]string) string {
	t.Helper()
	var b strings.Builder
	for u, p := range users {
		l, err := emulator.HTDigestLine(alg, u, "RPC", p)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(l + "\n")
	}
	path := filepath.Join(t.TempDir(), "users.htdigest")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// noSecrets fails when any output shows a password.
func noSecrets(t *testing.T, what string, r result) {
	t.Helper()
	for _, s := range securedSecrets {
		if strings.Contains(r.stdout, s) || strings.Contains(r.stderr, s) {
			t.Errorf("%s: output shows a password:\nstdout %s\nstderr %s", what, r.stdout, r.stderr)
		}
	}
}

// scriptedDevice is a device over HTTP whose state the test scripts: what
// Sys.GetInfo, OTA.GetBootState and OTA.Status answer, and what happens at
// OTA.Update and at each OTA.GetBootState.
type scriptedDevice struct {
	mu       sync.Mutex
	version  string
	bootedAt time.Time
	boot     map[string]any
	state    int
	onUpdate func(d *scriptedDevice) // under mu
	onBoot   func(d *scriptedDevice) // under mu, before answering OTA.GetBootState
	// onCommit, under mu, runs as OTA.Commit arrives, before the device
	// decides on it: what happened on the device between otactl's last
	// read and its commit.
	onCommit func(d *scriptedDevice)
	// handlers adds methods (health checks, OTA.Revert…).
	handlers map[string]rpc.HandlerFunc
}

func (d *scriptedDevice) start(t *testing.T) string {
	t.Helper()
	s := rpc.NewServer("dev1")
	s.Handle("Sys.GetInfo", func(context.Context, *rpc.Request) (any, error) {
		d.mu.Lock()
		defer d.mu.Unlock()
		return map[string]any{"id": "dev1", "app": "app", "arch": "esp32", "fw_version": d.version, "fw_id": "b" + d.version,
			"uptime": time.Since(d.bootedAt).Seconds()}, nil
	})
	s.Handle("OTA.GetBootState", func(context.Context, *rpc.Request) (any, error) {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.onBoot != nil {
			d.onBoot(d)
		}
		return d.boot, nil
	})
	s.Handle("OTA.Status", func(context.Context, *rpc.Request) (any, error) {
		d.mu.Lock()
		defer d.mu.Unlock()
		return map[string]any{"state": d.state}, nil
	})
	s.Handle("OTA.Update", func(context.Context, *rpc.Request) (any, error) {
		d.mu.Lock()
		defer d.mu.Unlock()
		d.onUpdate(d)
		return nil, nil
	})
	s.Handle("OTA.Commit", func(context.Context, *rpc.Request) (any, error) {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.onCommit != nil {
			d.onCommit(d)
		}
		if d.boot["is_committed"] == true {
			return nil, &rpc.Error{Code: -1}
		}
		d.boot["is_committed"] = true
		return nil, nil
	})
	for name, h := range d.handlers {
		s.Handle(name, h)
	}
	srv := httptest.NewServer(httptransport.NewHandler(s, httptransport.HandlerOptions{}))
	t.Cleanup(srv.Close)
	return srv.URL + "/rpc"
}

func newScriptedDevice() *scriptedDevice {
	return &scriptedDevice{
		version:  "1.0",
		bootedAt: time.Now().Add(-time.Hour),
		boot:     map[string]any{"active_slot": 0, "revert_slot": 0, "is_committed": true, "commit_timeout": 0},
	}
}

func walk(c *cobra.Command, fn func(*cobra.Command)) {
	fn(c)
	for _, s := range c.Commands() {
		walk(s, fn)
	}
}
