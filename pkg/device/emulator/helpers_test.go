package emulator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/otactl/otactl/pkg/ota/bundle"
	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/transport/pipe"
	"github.com/otactl/otactl/pkg/transport/transporttest"
)

const waitLimit = 10 * time.Second

type env struct {
	t     *testing.T
	dir   string
	clock *ManualClock
	d     *Device
	c     *rpc.Client
	srv   *httptest.Server

	fmu     sync.Mutex
	files   map[string][]byte
	handler http.Handler // replaces the file server when set
}

// setHandler makes the test HTTP server answer with h.
func (e *env) setHandler(h http.Handler) {
	e.fmu.Lock()
	defer e.fmu.Unlock()
	e.handler = h
}

func newEnv(t *testing.T, mod func(*Config)) *env {
	t.Helper()
	t.Cleanup(func() { goleak.VerifyNone(t, transporttest.LeakIgnores()...) })
	e := &env{t: t, dir: t.TempDir(), clock: NewManualClock(time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)), files: map[string][]byte{}}
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.fmu.Lock()
		h := e.handler
		b, ok := e.files[r.URL.Path]
		e.fmu.Unlock()
		if h != nil {
			h.ServeHTTP(w, r)
			return
		}
		if !ok {
			http.NotFound(w, r)
			return
		}
		http.ServeContent(w, r, "fw.zip", time.Time{}, bytes.NewReader(b))
	}))
	t.Cleanup(e.srv.Close)
	e.start(mod)
	return e
}

func (e *env) config(mod func(*Config)) Config {
	cfg := Config{StateDir: e.dir, Clock: e.clock, RebootAfter: 5 * time.Millisecond}
	if testing.Verbose() {
		cfg.Logger = slog.New(slog.NewTextHandler(testWriter{e.t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if mod != nil {
		mod(&cfg)
	}
	return cfg
}

// start powers on a device on e.dir (again after a power cut).
func (e *env) start(mod func(*Config)) {
	e.t.Helper()
	d, err := New(e.config(mod))
	if err != nil {
		e.t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	e.d = d
	e.c = rpc.NewClient(pipe.New(d.Handler()), rpc.ClientOptions{})
	c, dev := e.c, d
	e.t.Cleanup(func() {
		c.Close()
		dev.Close()
	})
}

func (e *env) call(method string, params any) (json.RawMessage, error) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	return e.c.Call(ctx, method, params)
}

func (e *env) mustCall(method string, params any) json.RawMessage {
	e.t.Helper()
	res, err := e.call(method, params)
	if err != nil {
		e.t.Fatalf("%s: %v", method, err)
	}
	return res
}

// wantErr checks that err is a device error with code and message.
func wantErr(t *testing.T, err error, code int, msg string) {
	t.Helper()
	var re *rpc.Error
	if !errors.As(err, &re) {
		t.Fatalf("want device error %d %q, got %v", code, msg, err)
	}
	if re.Code != code || re.Message != msg {
		t.Fatalf("want device error %d %q, got %d %q", code, msg, re.Code, re.Message)
	}
}

func (e *env) bootState() BootState {
	e.t.Helper()
	var bs BootState
	if err := json.Unmarshal(e.mustCall("OTA.GetBootState", nil), &bs); err != nil {
		e.t.Fatal(err)
	}
	return bs
}

func (e *env) info() map[string]any {
	e.t.Helper()
	var m map[string]any
	json.Unmarshal(e.mustCall("Sys.GetInfo", nil), &m)
	return m
}

// fireReboot advances the ManualClock to the reboot the device has
// scheduled, if any, or to the end of the reboot delay it is off for: both
// wait on the device's clock.
func (e *env) fireReboot() {
	e.d.mu.Lock()
	at := e.d.rebootAt
	if at.IsZero() {
		at = e.d.offUntil
	}
	e.d.mu.Unlock()
	if at.IsZero() {
		return
	}
	if left := at.Sub(e.clock.Now()); left > 0 {
		e.clock.Advance(left)
	}
}

// waitDone waits until the device is off for good (Done), letting a
// scheduled reboot happen meanwhile; what says what is awaited.
func (e *env) waitDone(what string) {
	e.t.Helper()
	deadline := time.Now().Add(waitLimit)
	for {
		e.fireReboot()
		select {
		case <-e.d.Done():
			return
		case <-time.After(time.Millisecond):
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s (state %+v)", what, e.d.State())
		}
	}
}

// waitBoots waits until the device has booted n times and is online,
// letting a scheduled reboot happen.
func (e *env) waitBoots(n int) State {
	e.t.Helper()
	deadline := time.Now().Add(waitLimit)
	for {
		e.fireReboot()
		s := e.d.State()
		if s.Boots >= n && s.Online {
			return s
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("device did not boot %d times (state %+v)", n, s)
		}
		time.Sleep(time.Millisecond)
	}
}

func (e *env) waitUntil(what string, f func(State) bool) State {
	e.t.Helper()
	deadline := time.Now().Add(waitLimit)
	for {
		s := e.d.State()
		if f(s) {
			return s
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s (state %+v)", what, s)
		}
		time.Sleep(time.Millisecond)
	}
}

type fw struct {
	version  string
	platform string
	behavior string
	app      []byte
	edit     func(m *bundle.Manifest)
}

func makeBundle(t *testing.T, f fw) []byte {
	t.Helper()
	if f.platform == "" {
		f.platform = "esp32"
	}
	if f.app == nil {
		f.app = bytes.Repeat([]byte("app "+f.version+" "), 2000)
	}
	m := &bundle.Manifest{Name: "testapp", Platform: f.platform, Version: f.version, BuildID: "build-" + f.version}
	if f.behavior != "" {
		m.Extra = map[string]json.RawMessage{BehaviorAttribute: json.RawMessage(`"` + f.behavior + `"`)}
	}
	parts := []bundle.PartData{
		bundle.BytesData("app", bundle.Part{Type: "app", Src: "app.bin"}, f.app),
		bundle.BytesData("fs", bundle.Part{Type: "fs", Src: "fs.img"}, []byte("fs image "+f.version)),
		bundle.BytesData("newfile", bundle.Part{Type: "file", Src: "new.txt"}, []byte("new in "+f.version)),
	}
	var buf bytes.Buffer
	if err := bundle.Create(&buf, m, parts, nil); err != nil {
		t.Fatal(err)
	}
	if f.edit != nil {
		// Rewrite with an edited manifest but the same data.
		rd, err := bundle.NewReader(bytes.NewReader(buf.Bytes()))
		if err != nil {
			t.Fatal(err)
		}
		m2 := rd.Manifest()
		f.edit(m2)
		return rawBundle(t, m2, map[string][]byte{"app.bin": f.app, "fs.img": []byte("fs image " + f.version), "new.txt": []byte("new in " + f.version)})
	}
	return buf.Bytes()
}

// rawBundle writes a bundle with exactly the manifest given (no digests
// recomputed), entries in sorted order.
func rawBundle(t *testing.T, m *bundle.Manifest, entries map[string][]byte) []byte {
	t.Helper()
	man, err := m.Indented()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	buf.Write(localEntry(bundle.ManifestName, man))
	for _, name := range []string{"app.bin", "fs.img", "new.txt"} {
		if b, ok := entries[name]; ok {
			buf.Write(localEntry(name, b))
		}
	}
	buf.Write([]byte{0x50, 0x4b, 1, 2})
	return buf.Bytes()
}

// serve publishes b at path on the test server and returns its URL.
func (e *env) serve(path string, b []byte) string {
	e.fmu.Lock()
	defer e.fmu.Unlock()
	e.files[path] = b
	return e.srv.URL + path
}

// update runs OTA.Update of a bundle and waits for the next boot.
func (e *env) update(f fw, commitTimeout int) {
	e.t.Helper()
	boots := e.d.State().Boots
	url := e.serve("/fw-"+f.version+".zip", makeBundle(e.t, f))
	if _, err := e.call("OTA.Update", map[string]any{"url": url, "commit_timeout": commitTimeout}); err != nil {
		e.t.Fatalf("OTA.Update: %v", err)
	}
	e.waitBoots(boots + 1)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}
