package emulator

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/otactl/otactl/pkg/ota/bundle"
	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/all"
	"github.com/otactl/otactl/pkg/transport/mqtt"
	"github.com/otactl/otactl/pkg/transport/mqtt/mqtttest"
	"github.com/otactl/otactl/pkg/transport/pipe"
	"github.com/otactl/otactl/pkg/transport/transporttest"
)

// startHost starts a host with n devices dev-0001…, each on a state dir
// of its own; mod, when set, edits each device's config. (Tests call
// leakCheck first, so that it runs after every cleanup.)
func startHost(t *testing.T, hc HostConfig, n int, mod func(c *Config)) (*Host, []*Device) {
	t.Helper()
	h, err := NewHost(context.Background(), hc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	dir := t.TempDir()
	cfgs := make([]Config, n)
	for i := range cfgs {
		id := fmt.Sprintf("dev-%04d", i+1)
		cfgs[i] = Config{ID: id, StateDir: filepath.Join(dir, id), RebootAfter: 5 * time.Millisecond}
		if mod != nil {
			mod(&cfgs[i])
		}
	}
	devs, err := h.AddDevices(context.Background(), cfgs)
	if err != nil {
		t.Fatal(err)
	}
	return h, devs
}

func leakCheck(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t, transporttest.LeakIgnores()...) })
}

// addr returns the device's address on transport tr.
func addr(t *testing.T, d *Device, tr string) string {
	t.Helper()
	for _, l := range d.Listeners() {
		if l.Transport == tr {
			return l.Addr
		}
	}
	t.Fatalf("%s has no %s listener: %v", d.ID(), tr, d.Listeners())
	return ""
}

// dialPort returns an RPC client of the device at port (any transport).
func dialPort(t *testing.T, port string) *rpc.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	conn, err := all.NewRegistry().Dial(ctx, port, transport.Options{})
	if err != nil {
		t.Fatalf("dial %s: %v", port, err)
	}
	c := rpc.NewClient(conn, rpc.ClientOptions{})
	t.Cleanup(func() { c.Close() })
	return c
}

// deviceID asks the device behind c for its id.
func deviceID(c *rpc.Client) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	res, err := c.Call(ctx, "Sys.GetInfo", nil)
	if err != nil {
		return "", err
	}
	var info struct{ ID string }
	err = json.Unmarshal(res, &info)
	return info.ID, err
}

// waitDevice waits until d's state satisfies cond.
func waitDevice(t *testing.T, d *Device, what string, cond func(State) bool) State {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for {
		s := d.State()
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: timed out waiting for %s (state %+v)", d.ID(), what, s)
		}
		time.Sleep(time.Millisecond)
	}
}

// Each device of a host answers, on every transport, as itself: over the
// host's one HTTP listener at /<id>/rpc (HTTP and WebSocket) and over its
// own connection to the host's broker (embedded, or another process's).
func TestHostDevicesAnswerAsThemselves(t *testing.T) {
	brokers := map[string]func(t *testing.T) string{
		"embedded": func(*testing.T) string { return "embedded:127.0.0.1:0" },
		"external": func(t *testing.T) string { return mqtttest.Start(t, mqtttest.Config{}).URL },
	}
	if m := os.Getenv(mqtttest.MosquittoEnv); m != "" {
		brokers["mosquitto"] = func(*testing.T) string { return "mqtt://" + m }
	}
	for name, broker := range brokers {
		t.Run(name, func(t *testing.T) {
			leakCheck(t)
			h, devs := startHost(t, HostConfig{Listen: "127.0.0.1:0", MQTTBroker: broker(t)}, 3, nil)
			for _, d := range devs {
				if got, want := addr(t, d, "http"), h.HTTPURL()+"/"+d.ID()+"/rpc"; got != want {
					t.Errorf("%s: http address %s, want %s", d.ID(), got, want)
				}
				for _, tr := range []string{"http", "ws", "mqtt"} {
					id, err := deviceID(dialPort(t, addr(t, d, tr)))
					if err != nil || id != d.ID() {
						t.Errorf("%s over %s: Sys.GetInfo says id %q, %v", d.ID(), tr, id, err)
					}
				}
			}
			if name == "embedded" {
				if n := h.broker.clients(mqtt.DeviceClientIDPrefix); n != 3 {
					t.Errorf("the embedded broker has %d clients, want one per device (3)", n)
				}
			}
		})
	}
}

// A request to a device's path but addressed (dst) to another device is
// not answered, as a device drops frames for another id; /<id>/rpc/<Method>
// works as /rpc/<Method> does on a device.
func TestHostHTTPPaths(t *testing.T) {
	leakCheck(t)
	h, _ := startHost(t, HostConfig{Listen: "127.0.0.1:0"}, 2, nil)
	post := func(path, body string) (int, string) {
		t.Helper()
		resp, err := http.Post(h.HTTPURL()+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b))
	}
	if code, body := post("/dev-0001/rpc", `{"id":5,"src":"t","dst":"dev-0002","method":"Sys.GetInfo"}`); code != 200 || body != "" {
		t.Errorf("a frame for dev-0002 sent to dev-0001: %d %q, want an empty 200 (no answer)", code, body)
	}
	if code, body := post("/dev-0002/rpc", `{"id":5,"src":"t","dst":"dev-0002","method":"Sys.GetInfo"}`); code != 200 || !strings.Contains(body, `"src":"dev-0002"`) {
		t.Errorf("a frame for dev-0002: %d %q", code, body)
	}
	if code, body := post("/dev-0002/rpc/Sys.GetInfo", ``); code != 200 || !strings.Contains(body, `"id":"dev-0002"`) {
		t.Errorf("/dev-0002/rpc/Sys.GetInfo: %d %q", code, body)
	}
	if code, body := post("/dev-0009/rpc", `{"id":5,"method":"Sys.GetInfo"}`); code != 404 || !strings.Contains(body, `no device "dev-0009"`) || !strings.Contains(body, "(2 devices: dev-0001 … dev-0002)") {
		t.Errorf("an unknown device: %d %q", code, body)
	}
	if code, body := post("/rpc", `{"id":5,"method":"Sys.GetInfo"}`); code != 404 || !strings.Contains(body, "/ID/rpc") {
		t.Errorf("/rpc on a host: %d %q", code, body)
	}
}

// A reboot takes only that device off the air: its connections in flight
// (HTTP and WebSocket) close, new ones get no answer (a link error, never
// an HTTP status from something that is not the device), while the other
// devices keep answering on the same listener and broker; it comes back at
// the same addresses when its reboot delay, on the clock, is over.
func TestHostRebootDetachesOnlyThatDevice(t *testing.T) {
	leakCheck(t)
	clock := NewManualClock(time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC))
	h, devs := startHost(t, HostConfig{Listen: "127.0.0.1:0", MQTTBroker: "embedded:127.0.0.1:0", Clock: clock}, 3,
		func(c *Config) { c.RebootDelay = 5 * time.Second })
	stall := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select { // a download that never comes
		case <-stall:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(slow.Close)
	t.Cleanup(func() { close(stall) })
	d1, d2, d3 := devs[0], devs[1], devs[2]
	ws1, ws2 := dialPort(t, addr(t, d1, "ws")), dialPort(t, addr(t, d2, "ws"))
	for _, c := range []*rpc.Client{ws1, ws2} {
		if _, err := deviceID(c); err != nil {
			t.Fatal(err)
		}
	}
	// An OTA.Update in flight on dev-0002, waiting for its download.
	inflight := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		defer cancel()
		_, err := dialPort(t, addr(t, d2, "http")).Call(ctx, "OTA.Update", map[string]any{"url": slow.URL + "/fw.zip"})
		inflight <- err
	}()
	waitDevice(t, d2, "the update in progress", func(s State) bool { return s.OTAState == 1 })

	d2.Reboot()
	s := waitDevice(t, d2, "dev-0002 off for its reboot", func(s State) bool { return !s.OffUntil.IsZero() })
	if s.Online {
		t.Fatalf("dev-0002 online during its reboot: %+v", s)
	}
	select {
	case err := <-inflight:
		var re *rpc.Error
		if err == nil || errors.As(err, &re) || errors.Is(err, transport.ErrNotRPC) || errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("the request in flight to the rebooting device ended with %v, want its connection closed", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("the request in flight to the rebooting device is still open")
	}
	if _, err := deviceID(ws2); err == nil {
		t.Error("dev-0002's WebSocket connection still answers during its reboot")
	}
	for _, tr := range []string{"http", "ws"} {
		conn, err := all.NewRegistry().Dial(context.Background(), addr(t, d2, tr), transport.Options{})
		if err == nil {
			c := rpc.NewClient(conn, rpc.ClientOptions{})
			_, err = deviceID(c)
			c.Close()
		}
		var re *rpc.Error
		if err == nil || errors.As(err, &re) || errors.Is(err, transport.ErrNotRPC) {
			t.Errorf("dev-0002 over %s while off: %v, want a link error", tr, err)
		}
	}
	// The others answer meanwhile, on the same listener and broker, and
	// dev-0001's WebSocket connection is untouched.
	for _, c := range []*rpc.Client{ws1, dialPort(t, addr(t, d3, "http")), dialPort(t, addr(t, d1, "mqtt")), dialPort(t, addr(t, d3, "mqtt"))} {
		if _, err := deviceID(c); err != nil {
			t.Errorf("another device during dev-0002's reboot: %v", err)
		}
	}

	clock.Advance(5 * time.Second)
	waitDevice(t, d2, "dev-0002 back", func(s State) bool { return s.Online && s.Boots == 2 })
	for _, tr := range []string{"http", "ws", "mqtt"} {
		if id, err := deviceID(dialPort(t, addr(t, d2, tr))); err != nil || id != "dev-0002" {
			t.Errorf("dev-0002 over %s after its reboot: %q %v", tr, id, err)
		}
	}
	if n := h.broker.clients(mqtt.DeviceClientIDPrefix); n != 3 {
		t.Errorf("the embedded broker has %d clients after the reboot, want 3", n)
	}
}

// Each device serves HTTPLimits.MaxConns requests and WebSocket
// connections at once, as a device on its own does; the host's listener
// is sized for all of them.
func TestHostPerDeviceLimit(t *testing.T) {
	leakCheck(t)
	h, devs := startHost(t, HostConfig{Listen: "127.0.0.1:0", HTTPLimits: HTTPLimits{MaxConns: 2}}, 3, nil)
	if got := h.http.ln.max; got != 6 {
		t.Errorf("the host's listener serves %d connections, want 2 per device (6)", got)
	}
	for _, c := range []*rpc.Client{dialPort(t, addr(t, devs[0], "ws")), dialPort(t, addr(t, devs[0], "ws"))} {
		if _, err := deviceID(c); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := http.Post(addr(t, devs[0], "http"), "application/json", strings.NewReader(`{"id":1,"method":"Sys.GetInfo"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" {
		t.Errorf("a third request to a device that serves two: %s, want 503 with Retry-After", resp.Status)
	}
	if id, err := deviceID(dialPort(t, addr(t, devs[1], "http"))); err != nil || id != "dev-0002" {
		t.Errorf("another device: %q %v", id, err)
	}
	for n, want := range map[int]int{1: 16, 10: 160, 1000: DefaultHostMaxConns} {
		if got := (&hostHTTP{lim: HTTPLimits{}.withDefaults()}).limit(n); got != want {
			t.Errorf("listener limit for %d devices: %d, want %d", n, got, want)
		}
	}
	if got := (&hostHTTP{lim: HTTPLimits{}.withDefaults(), maxConns: 50}).limit(1000); got != 50 {
		t.Errorf("HostConfig.MaxConns 50: limit %d", got)
	}
}

// Ids are checked, unique on a host, and free again once their device is
// off for good: a device powered on again on the same flash takes its
// place at the same address.
func TestHostDeviceIDs(t *testing.T) {
	leakCheck(t)
	h, devs := startHost(t, HostConfig{Listen: "127.0.0.1:0"}, 2, nil)
	for _, id := range []string{"", "a/b", "dev#1", "..", "dev 1"} {
		if _, err := h.AddDevice(context.Background(), Config{ID: id, StateDir: t.TempDir()}); err == nil {
			t.Errorf("id %q accepted", id)
		}
	}
	if _, err := h.AddDevice(context.Background(), Config{ID: "dev-0001", StateDir: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "unique") {
		t.Errorf("a second dev-0001: %v", err)
	}
	if _, err := h.AddDevice(context.Background(), Config{ID: "x", StateDir: t.TempDir(), Listen: "127.0.0.1:0"}); err == nil {
		t.Error("a hosted device with a listener of its own accepted")
	}
	d2 := devs[1]
	dir := d2.cfg.StateDir
	d2.PowerCut()
	<-d2.Done()
	d2b, err := h.AddDevice(context.Background(), Config{ID: "dev-0002", StateDir: dir})
	if err != nil {
		t.Fatalf("powering dev-0002 on again: %v", err)
	}
	if h.Device("dev-0002") != d2b || len(h.Devices()) != 2 || h.Devices()[1] != d2b {
		t.Errorf("the host's devices after the power cycle: %v", h.Devices())
	}
	if id, err := deviceID(dialPort(t, addr(t, d2b, "http"))); err != nil || id != "dev-0002" {
		t.Errorf("dev-0002 powered on again: %q %v", id, err)
	}
}

// FailsNewFirmware is the documented function of (seed, id, rate), and
// picks about that share of devices.
func TestFailsNewFirmware(t *testing.T) {
	picked := 0
	for i := range 10000 {
		id := fmt.Sprintf("dev-%05d", i)
		got := FailsNewFirmware(7, id, 0.05)
		sum := sha256.Sum256([]byte("otactl-fail-rate\x00" + "7" + "\x00" + id))
		want := float64(binary.BigEndian.Uint64(sum[:8])>>11)/(1<<53) < 0.05
		if got != want {
			t.Fatalf("FailsNewFirmware(7, %s, 0.05) = %v, the documented formula says %v", id, got, want)
		}
		if got {
			picked++
		}
		if got && !FailsNewFirmware(7, id, 0.2) {
			t.Fatalf("%s fails at rate 0.05 but not at 0.2", id)
		}
	}
	if picked < 400 || picked > 600 {
		t.Errorf("rate 0.05 picked %d of 10000 devices", picked)
	}
	if FailsNewFirmware(7, "dev-0001", 0) || !FailsNewFirmware(7, "dev-0001", 1) {
		t.Error("rates 0 and 1")
	}
}

// HostConfig.FailRate: the devices FailsNewFirmware picks crash on
// booting a new firmware and roll back; the others run it.
func TestHostFailRate(t *testing.T) {
	leakCheck(t)
	const seed, rate = 11, 0.3
	clock := NewManualClock(time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC))
	_, devs := startHost(t, HostConfig{FailRate: rate, Seed: seed, Clock: clock}, 12, nil)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(makeBundle(t, fw{version: "2.0.0"}))
	}))
	t.Cleanup(srv.Close)
	var failing, fine int
	for _, d := range devs {
		want := FailsNewFirmware(seed, d.ID(), rate)
		if d.State().CrashOnNewFirmware != want {
			t.Fatalf("%s: CrashOnNewFirmware %v, FailsNewFirmware says %v", d.ID(), !want, want)
		}
		if want {
			failing++
		} else {
			fine++
		}
		c := rpc.NewClient(pipe.New(d.Handler()), rpc.ClientOptions{})
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		_, err := c.Call(ctx, "OTA.Update", map[string]any{"url": srv.URL + "/fw.zip", "commit_timeout": 300})
		cancel()
		c.Close()
		if err != nil {
			t.Fatalf("%s: OTA.Update: %v", d.ID(), err)
		}
	}
	if failing == 0 || fine == 0 {
		t.Fatalf("seed %d picks %d failing and %d fine devices: pick a seed that gives both", seed, failing, fine)
	}
	clock.Advance(time.Second) // the reboots after the replies
	for _, d := range devs {
		if d.State().CrashOnNewFirmware {
			s := waitDevice(t, d, "the rollback", func(s State) bool { return s.Online && s.Boots == 3 })
			if s.Version != "1.0.0" || s.RunningSlot != 0 || !s.Boot.IsCommitted {
				t.Errorf("%s (failing): %+v, want 1.0.0 on slot 0, committed", d.ID(), s)
			}
			continue
		}
		s := waitDevice(t, d, "the new firmware", func(s State) bool { return s.Online && s.Boots == 2 })
		if s.Version != "2.0.0" || s.RunningSlot != 1 || s.Boot.IsCommitted || !s.CommitTimerArmed {
			t.Errorf("%s: %+v, want 2.0.0 on slot 1, uncommitted", d.ID(), s)
		}
	}
}

// A device with CrashOnNewFirmware boots a firmware of the build it falls
// back to: only a new build crashes it.
func TestCrashOnNewFirmwareSameBuild(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.CrashOnNewFirmware = true })
	e.update(fw{version: "1.0.1", edit: func(m *bundle.Manifest) { m.BuildID = "factory" }}, 300)
	if s := e.d.State(); s.Boots != 2 || s.Version != "1.0.1" || s.RunningSlot != 1 || s.Boot.IsCommitted {
		t.Fatalf("the same build: %+v", s)
	}
	e.mustCall("OTA.Commit", nil)
	e.update(fw{version: "2.0.0"}, 300)
	s := e.waitBoots(3)
	if s.Version != "1.0.1" || s.RunningSlot != 1 || !s.Boot.IsCommitted {
		t.Fatalf("a new build: %+v, want back on 1.0.1", s)
	}
}

// A rebooting device stays off for RebootDelay on its clock: with a
// ManualClock it comes back when Advance moves past State.OffUntil, not
// after that much real time.
func TestRebootDelayOnClock(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.RebootDelay = time.Hour })
	start := e.clock.Now()
	e.d.Reboot()
	s := e.waitUntil("off for the reboot", func(s State) bool { return !s.OffUntil.IsZero() })
	if s.Online || !s.OffUntil.Equal(start.Add(time.Hour)) {
		t.Fatalf("during the reboot: %+v", s)
	}
	e.clock.Advance(time.Hour)
	s = e.waitUntil("back after the delay", func(s State) bool { return s.Online && s.Boots == 2 })
	if !s.OffUntil.IsZero() {
		t.Fatalf("back: %+v", s)
	}
}

// Many devices on one embedded broker: each has its own connection, all
// are connected once AddDevices returns, and an idle device costs a bounded
// number of goroutines (its MQTT client's and the broker's side of it; no
// per-device timer or polling loop of the emulator's own).
func TestHostManyDevices(t *testing.T) {
	leakCheck(t)
	const n = 64
	before := runtime.NumGoroutine()
	h, devs := startHost(t, HostConfig{Listen: "127.0.0.1:0", MQTTBroker: "embedded:127.0.0.1:0"}, n, nil)
	for _, d := range devs {
		if s := d.State(); !s.Online || !s.MQTTConnected {
			t.Fatalf("%s after AddDevices: %+v", d.ID(), s)
		}
	}
	if got := h.broker.clients(mqtt.DeviceClientIDPrefix); got != n {
		t.Fatalf("%d device connections on the broker, want %d", got, n)
	}
	perDevice := float64(runtime.NumGoroutine()-before) / n
	t.Logf("%.1f goroutines a device (MQTT client and the embedded broker's side)", perDevice)
	if perDevice > 16 {
		t.Errorf("%.1f goroutines a device: an idle device should cost its MQTT connection only", perDevice)
	}
	for _, d := range []*Device{devs[0], devs[n/2], devs[n-1]} {
		if id, err := deviceID(dialPort(t, addr(t, d, "mqtt"))); err != nil || id != d.ID() {
			t.Errorf("%s over MQTT: %q %v", d.ID(), id, err)
		}
	}
}
