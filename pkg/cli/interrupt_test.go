package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/rpc"
	httptransport "github.com/otactl/otactl/pkg/transport/http"
)

// startUpdatingDevice serves a committed device whose OTA.Update never
// answers (a long download); entered is closed when OTA.Update arrives.
func startUpdatingDevice(t *testing.T) (port string, entered <-chan struct{}) {
	t.Helper()
	ch := make(chan struct{})
	var once sync.Once
	s := rpc.NewServer("dev1")
	s.Handle("Sys.GetInfo", func(ctx context.Context, r *rpc.Request) (any, error) {
		return map[string]any{"id": "dev1", "app": "app", "fw_version": "1.0", "fw_id": "b1", "arch": "esp32", "uptime": 100}, nil
	})
	s.Handle("OTA.GetBootState", func(ctx context.Context, r *rpc.Request) (any, error) {
		return map[string]any{"active_slot": 0, "revert_slot": 0, "is_committed": true, "commit_timeout": 0}, nil
	})
	s.Handle("OTA.Status", func(ctx context.Context, r *rpc.Request) (any, error) {
		return map[string]any{"state": 1, "progress_percent": 40, "msg": "progress"}, nil
	})
	s.Handle("OTA.Update", func(ctx context.Context, r *rpc.Request) (any, error) {
		once.Do(func() { close(ch) })
		<-ctx.Done()
		return nil, ctx.Err()
	})
	srv := httptest.NewServer(httptransport.NewHandler(s, httptransport.HandlerOptions{}))
	t.Cleanup(srv.Close)
	return srv.URL + "/rpc", ch
}

// runInterrupted runs otactl and cancels its context (as Ctrl-C does) once
// interrupt is closed.
func runInterrupted(t *testing.T, interrupt <-chan struct{}, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-interrupt:
			cancel()
		case <-ctx.Done():
		}
	}()
	var out, errOut bytes.Buffer
	ios := &IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}
	done := make(chan int, 1)
	go func() { done <- mainContext(ctx, args, ios, func(string) string { return "" }) }()
	select {
	case code := <-done:
		return result{code, out.String(), errOut.String()}
	case <-time.After(20 * time.Second):
		t.Fatalf("otactl %v did not return after the interrupt", args)
	}
	return result{}
}

// Ctrl-C while the device downloads a --url bundle: the device cannot be
// stopped and carries on, so otactl must not claim that it "did not
// install the update" (and must not report an unreachable device, exit 5).
func TestUpdateInterruptedSaysTheDeviceCarriesOn(t *testing.T) {
	port, entered := startUpdatingDevice(t)
	r := runInterrupted(t, entered, "--port", port, "update", "--url", "http://127.0.0.1:1/fw.zip")
	if r.code != ExitFailure {
		t.Fatalf("exit %d, want %d; stderr %q", r.code, ExitFailure, r.stderr)
	}
	if !strings.Contains(r.stderr, "Error: interrupted: the device goes on with the update by itself") ||
		strings.Contains(r.stderr, "did not install") {
		t.Fatalf("stderr %q", r.stderr)
	}
	if r.stdout != "" {
		t.Fatalf("stdout %q", r.stdout)
	}
}

// With --file, otactl's server stops: the download fails.
func TestUpdateFileInterruptedSaysTheServerStopped(t *testing.T) {
	port, entered := startUpdatingDevice(t)
	dir := t.TempDir()
	path := writeTestBundle(t, dir)
	r := runInterrupted(t, entered, "--port", port, "--json", "update", "--file", path, "--serve-addr", "127.0.0.1")
	if r.code != ExitFailure {
		t.Fatalf("exit %d, want %d; stderr %q", r.code, ExitFailure, r.stderr)
	}
	var doc struct {
		Error    string `json:"error"`
		ExitCode int    `json:"exit_code"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil {
		t.Fatalf("stdout is not one JSON document: %v\n%s", err, r.stdout)
	}
	if doc.ExitCode != ExitFailure || !strings.HasPrefix(doc.Error, "interrupted: otactl stopped serving the bundle") {
		t.Fatalf("document %+v", doc)
	}
}

// Any other command interrupted: exit 1 and "interrupted", not a timeout
// or an unreachable device.
func TestCallInterrupted(t *testing.T) {
	port := startDevice(t)
	now := make(chan struct{})
	time.AfterFunc(200*time.Millisecond, func() { close(now) })
	r := runInterrupted(t, now, "--port", port, "call", "Slow")
	if r.code != ExitFailure || !strings.Contains(r.stderr, "Error: interrupted: ") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
}
