package emulator_test

// The library use shown in docs/emulator.md, kept compiling and passing.

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/device/emulator"
	"github.com/otactl/otactl/pkg/ota/bundle"
	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/all"
)

// call dials port afresh (a reboot closes connections) and makes one call.
func call(t *testing.T, port, method string, params, out any) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return callCtx(ctx, port, method, params, out)
}

func callCtx(ctx context.Context, port, method string, params, out any) error {
	conn, err := all.NewRegistry().Dial(ctx, port, transport.Options{})
	if err != nil {
		return err
	}
	c := rpc.NewClient(conn, rpc.ClientOptions{})
	defer c.Close()
	return c.CallInto(ctx, method, params, out)
}

// waitFor polls d until cond holds.
func waitFor(t *testing.T, d *emulator.Device, cond func(emulator.State) bool) emulator.State {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s := d.State()
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("device state %+v", s)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// serveBundle builds a bundle whose firmware behaves as behavior says
// ("" for a good one) and serves it; it returns its URL.
func serveBundle(t *testing.T, version, behavior string) string {
	t.Helper()
	m := &bundle.Manifest{Name: "myapp", Platform: "esp32", Version: version, BuildID: "ci-" + version}
	if behavior != "" {
		m.Extra = map[string]json.RawMessage{emulator.BehaviorAttribute: json.RawMessage(`"` + behavior + `"`)}
	}
	var buf bytes.Buffer
	parts := []bundle.PartData{bundle.BytesData("app", bundle.Part{Type: "app", Src: "app.bin"}, bytes.Repeat([]byte{0xa5}, 100000))}
	if err := bundle.Create(&buf, m, parts, nil); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "fw.zip", time.Time{}, bytes.NewReader(buf.Bytes()))
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/fw.zip"
}

func TestLibraryRollbackByCommitTimer(t *testing.T) {
	clock := emulator.NewManualClock(time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC))
	d, err := emulator.New(emulator.Config{
		StateDir: t.TempDir(),
		Listen:   "127.0.0.1:0", // HTTP and WebSocket on a free port
		Clock:    clock,         // commit timers, watchdogs and reboots move only on Advance
		// RebootDelay 0 (the library's default): back at once after a reboot.
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	var port string
	for _, l := range d.Listeners() {
		if l.Transport == "http" {
			port = l.Addr // http://127.0.0.1:PORT/rpc
		}
	}

	url := serveBundle(t, "2.0.0", "")
	if err := call(t, port, "OTA.Update", map[string]any{"url": url, "commit_timeout": 300}, nil); err != nil {
		t.Fatal(err)
	}
	// The device reboots 100 ms after its reply, on its clock; until then
	// every call gets error 418 "shutting down in N ms".
	clock.Advance(emulator.DefaultRebootAfter)
	waitFor(t, d, func(s emulator.State) bool { return s.Boots == 2 && s.Online && s.CommitTimerArmed })
	var bs emulator.BootState
	if err := call(t, port, "OTA.GetBootState", nil, &bs); err != nil || bs.ActiveSlot != 1 || bs.IsCommitted {
		t.Fatalf("after the update: %+v %v", bs, err)
	}

	clock.Advance(300 * time.Second) // nobody committed: the device reverts and reboots
	s := waitFor(t, d, func(s emulator.State) bool { return s.Boots == 3 && s.Online })
	if s.Version != "1.0.0" || !s.Boot.IsCommitted || s.RunningSlot != 0 {
		t.Fatalf("after the commit timeout: %+v", s)
	}
}

func TestLibraryPowerCut(t *testing.T) {
	dir := t.TempDir()
	d, err := emulator.New(emulator.Config{
		StateDir: dir,
		Listen:   "127.0.0.1:0",
		// Cut the power at the first boot-state write: the one that
		// would make the new firmware boot.
		Hooks: emulator.Hooks{FlashWrite: emulator.PowerCutAt(1, "bootstate")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	port := d.Listeners()[0].Addr
	url := serveBundle(t, "2.0.0", "")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- callCtx(ctx, port, "OTA.Update", map[string]any{"url": url}, nil) }()
	<-d.Done() // the power is off: the call is never answered
	cancel()
	<-done
	d.Close() // release its listeners (and an embedded broker)

	// Power on: a new Device on the same flash.
	d2, err := emulator.New(emulator.Config{StateDir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := d2.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if s := d2.State(); s.Version != "1.0.0" || !s.Boot.IsCommitted {
		t.Fatalf("after the power cut: %+v", s)
	}
}

func TestLibraryCrashOnBoot(t *testing.T) {
	d, err := emulator.New(emulator.Config{StateDir: t.TempDir(), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	url := serveBundle(t, "2.0.0", emulator.BehaviorCrashOnBoot)
	if err := call(t, d.Listeners()[0].Addr, "OTA.Update", map[string]any{"url": url, "commit_timeout": 300}, nil); err != nil {
		t.Fatal(err)
	}
	// The new firmware crashes on its first boot; the device boots the
	// old one again at once.
	s := waitFor(t, d, func(s emulator.State) bool { return s.Boots == 3 && s.Online })
	if s.Version != "1.0.0" || !s.Boot.IsCommitted {
		t.Fatalf("%+v", s)
	}
}
