package ota_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/device/emulator"
	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/all"
	"github.com/otactl/otactl/pkg/transport/mqtt/mqtttest"
)

// netLink is an emulated device on one real transport, with a way to cut
// the link and bring it back.
type netLink struct {
	d       *emulator.Device
	clock   *emulator.ManualClock
	synced  time.Time // when the clock was last moved
	port    string
	cut     func() // the link goes away
	restore func() // and comes back
}

// startNetLink starts an emulator reachable over tr ("http", "ws",
// "serial", "mochi" or "mosquitto"). Its ManualClock moves only when the
// test says (nl.tick): no early write gives up waiting for a gap, and the
// update watchdog does not fire, so a test sees only what its link does.
func startNetLink(t *testing.T, tr string) *netLink {
	t.Helper()
	dir := t.TempDir()
	nl := &netLink{clock: emulator.NewManualClock(time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)), synced: time.Now()}
	cfg := emulator.Config{StateDir: filepath.Join(dir, "flash"), ID: "dev-" + tr, Clock: nl.clock,
		RebootAfter: 10 * time.Millisecond, RebootDelay: 10 * time.Millisecond,
		MQTTReconnectMin: time.Second, MQTTReconnectMax: time.Second}
	var listener emulator.Listener
	switch tr {
	case "http", "ws":
		listener = emulator.NewHTTPListener("127.0.0.1:0", nil)
	case "serial":
		listener = emulator.NewSerialListener(filepath.Join(dir, "tty"), nil)
	case "mochi":
		b := mqtttest.Start(t, mqtttest.Config{})
		cfg.MQTTBroker = b.URL
		nl.cut = b.Close
		nl.restore = func() { b = mqtttest.Start(t, mqtttest.Config{Addr: b.Addr}) }
	case "mosquitto":
		m := startMosquitto(t)
		cfg.MQTTBroker = "mqtt://" + m.addr
		nl.cut, nl.restore = m.stop, m.start
	}
	if listener != nil {
		cfg.Listeners = []emulator.Listener{listener}
	}
	d, err := emulator.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	nl.d = d
	if listener != nil {
		nl.cut = func() {
			if err := listener.Stop(); err != nil {
				t.Errorf("stopping the %s listener: %v", tr, err)
			}
		}
		nl.restore = func() {
			if err := listener.Start(context.Background(), d.Handler()); err != nil {
				t.Errorf("restarting the %s listener: %v", tr, err)
			}
		}
	}
	for _, l := range d.Listeners() {
		if l.Transport == tr || (l.Transport == "mqtt" && (tr == "mochi" || tr == "mosquitto")) {
			nl.port = l.Addr
		}
	}
	return nl
}

func (nl *netLink) dial(ctx context.Context) (*rpc.Client, error) {
	conn, err := all.NewRegistry().Dial(ctx, nl.port, transport.Options{})
	if err != nil {
		return nil, err
	}
	return rpc.NewClient(conn, rpc.ClientOptions{}), nil
}

// tick moves the device's clock on by more than its MQTT reconnect delay
// (with its jitter), so that a device that lost its broker tries it again,
// and by the real time since the last tick, so that the device's uptime
// never says it booted after it did (the push reads it for evidence of a
// reset).
func (nl *netLink) tick() {
	now := time.Now()
	nl.clock.Advance(2*time.Second + now.Sub(nl.synced))
	nl.synced = now
}

// waitVersion waits until the device runs version after a boot, moving its
// clock on so that the reboot it scheduled happens.
func (nl *netLink) waitVersion(t *testing.T, version string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		s := nl.d.State()
		if s.Online && s.Version == version {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the device does not run %s (state %+v)", version, s)
		}
		nl.clock.Advance(20 * time.Millisecond)
		time.Sleep(5 * time.Millisecond)
	}
}

// The link goes away in the middle of a push and comes back a little later
// (a cable glitch on the serial link, a dropped WebSocket, an HTTP
// listener refusing connections, a broker restart): the push resumes where
// the device is and the device ends up updated.
func TestPushResumesOverRealLinks(t *testing.T) {
	for _, tr := range []string{"http", "ws", "serial", "mochi", "mosquitto"} {
		t.Run(tr, func(t *testing.T) {
			nl := startNetLink(t, tr)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			c, err := nl.dial(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			fw := benchBundle(t, 200<<10)
			window := ota.DefaultWindow
			if tr == "serial" {
				window = 1
			}
			var once sync.Once
			cutAt := int64(len(fw) / 3)
			var events []string
			t0 := time.Now()
			res, err := ota.New(c).Push(ctx, bytes.NewReader(fw), int64(len(fw)), ota.PushOptions{
				Window: window, Redial: nl.dial, AttemptTimeout: time.Second,
				Backoff: ota.Backoff{Initial: 50 * time.Millisecond, Max: 200 * time.Millisecond},
				Progress: func(sent, _ int64) {
					if sent >= cutAt {
						once.Do(nl.cut)
					}
				},
				OnEvent: func(ev ota.Event) {
					events = append(events, fmt.Sprintf("%s@%v", ev.Kind, time.Since(t0).Round(time.Millisecond)))
					if ev.Kind != ota.EventReconnecting {
						return
					}
					if ev.Attempt == 2 {
						nl.restore() // away for one more attempt: connection refused meanwhile
					}
					nl.tick() // the device tries its broker again

				},
			})
			if err != nil {
				t.Fatalf("push: %v (events %v)", err, events)
			}
			t.Logf("events %v", events)
			if res.Resumes < 1 {
				t.Fatalf("result %+v, events %v: the link was never lost", res, events)
			}
			nl.waitVersion(t, "2.0.0")
			if bs := nl.d.State().Boot; bs.ActiveSlot != 1 || bs.IsCommitted {
				t.Fatalf("boot state %+v", bs)
			}
		})
	}
}

// With several writes in flight over each network link, the emulator
// processes them in order: none is refused, none resent.
func TestPushWindowOverRealLinks(t *testing.T) {
	for _, tr := range []string{"http", "ws", "mochi"} {
		t.Run(tr, func(t *testing.T) {
			nl := startNetLink(t, tr)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			c, err := nl.dial(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			fw := benchBundle(t, 100<<10)
			window := 32
			if tr == "http" {
				window = 8 // a connection each; the emulator takes 16 at once
			}
			res, err := ota.New(c).Push(ctx, bytes.NewReader(fw), int64(len(fw)), ota.PushOptions{Window: window})
			if err != nil {
				t.Fatal(err)
			}
			if res.Retries != 0 || !res.Confirmed {
				t.Fatalf("result %+v", res)
			}
			nl.waitVersion(t, "2.0.0")
		})
	}
}

// mosquittoProc is a mosquitto of the test's own, on a fixed loopback port,
// so that it can be restarted where it was (the shared one of
// OTACTL_TEST_MOSQUITTO must not be).
type mosquittoProc struct {
	t      *testing.T
	bin    string
	conf   string
	addr   string
	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed once cmd was reaped
}

// startMosquitto starts a mosquitto on a free loopback port, or skips the
// test when mosquitto is not installed.
func startMosquitto(t *testing.T) *mosquittoProc {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/mosquitto"); serr != nil {
			t.Skip("mosquitto is not installed (apt-get install mosquitto): the restart of a real broker is not tested")
		}
		bin = "/usr/sbin/mosquitto"
	}
	m := &mosquittoProc{t: t, bin: bin}
	for attempt := 0; ; attempt++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		m.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		m.conf = filepath.Join(t.TempDir(), "mosquitto.conf")
		conf := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest none\n", port)
		if err := os.WriteFile(m.conf, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		if m.launch() {
			break
		}
		if attempt == 4 {
			t.Fatal("mosquitto did not start on a free port")
		}
	}
	t.Cleanup(m.stop)
	return m
}

// launch starts the process and waits until it accepts connections.
func (m *mosquittoProc) launch() bool {
	cmd := exec.Command(m.bin, "-c", m.conf)
	if err := cmd.Start(); err != nil {
		m.t.Fatalf("starting mosquitto: %v", err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	for range 100 {
		if c, err := net.DialTimeout("tcp", m.addr, time.Second); err == nil {
			c.Close()
			m.mu.Lock()
			m.cmd, m.exited = cmd, exited
			m.mu.Unlock()
			return true
		}
		select {
		case <-exited:
			return false // the port was taken meanwhile
		case <-time.After(20 * time.Millisecond):
		}
	}
	cmd.Process.Kill()
	<-exited
	return false
}

func (m *mosquittoProc) start() {
	if !m.launch() {
		m.t.Errorf("mosquitto did not restart on %s", m.addr)
	}
}

func (m *mosquittoProc) stop() {
	m.mu.Lock()
	cmd, exited := m.cmd, m.exited
	m.cmd = nil
	m.mu.Unlock()
	if cmd != nil {
		cmd.Process.Kill()
		<-exited
	}
}
