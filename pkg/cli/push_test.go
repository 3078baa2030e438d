package cli

import (
	"context"
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/device/emulator"
	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/transport/mqtt/mqtttest"
	"github.com/otactl/otactl/pkg/transport/pipe"
)

// A device reset in the middle of a push loses the update: one cause, one
// verdict and one exit code (6, not applied, boot state unchanged) on every
// transport, whether the link drops with the device (WebSocket, serial),
// refuses connections for a while (HTTP) or stays up without the device
// on it (MQTT). The device then takes the next push.
func TestPushResetIsNotAppliedOnEveryTransport(t *testing.T) {
	for _, tr := range []string{"http", "ws", "serial", "mqtt"} {
		t.Run(tr, func(t *testing.T) {
			var d *emulator.Device
			var parts atomic.Int32
			armed := atomic.Bool{}
			armed.Store(true)
			d, port := startEmulator(t, tr, func(cfg *emulator.Config) {
				cfg.Hooks.FlashWrite = func(w emulator.FlashWrite) error {
					// The reset comes a few chunks into the part.
					if w.Kind == "part" && armed.Load() && parts.Add(1) == 5 {
						armed.Store(false)
						go d.Reboot()
					}
					return nil
				}
			})
			fw := pushBundle(t, "2.0.0", 150<<10)
			r := run(t, nil, "--port", port, "--timeout", "5s", "--json", "push", fw)
			if r.code != ExitUpdate {
				t.Fatalf("exit %d, want %d; stderr:\n%s", r.code, ExitUpdate, r.stderr)
			}
			var doc struct {
				ExitCode int    `json:"exit_code"`
				Reason   string `json:"reason"`
			}
			if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil || doc.ExitCode != ExitUpdate || doc.Reason != "device_reset" {
				t.Fatalf("--json document %s (%v)", r.stdout, err)
			}
			for _, want := range []string{"was reset", "nothing was applied", "boot state is unchanged"} {
				if !strings.Contains(r.stderr, want) {
					t.Fatalf("stderr does not say %q:\n%s", want, r.stderr)
				}
			}
			if s := d.State(); s.Boots != 2 || s.Version != "1.0.0" || s.Boot != (emulator.BootState{IsCommitted: true}) {
				t.Fatalf("device state %+v", s)
			}
			r = run(t, nil, "--port", port, "--timeout", "5s", "push", pushBundle(t, "3.0.0", 20<<10), "--commit")
			if r.code != 0 || !strings.Contains(r.stdout, "runs app 3.0.0, committed") {
				t.Fatalf("the next push: exit %d, stdout %q, stderr:\n%s", r.code, r.stdout, r.stderr)
			}
		})
	}
}

// The broker restarts in the middle of a push: otactl reconnects, finds the
// device still receiving the update and goes on; the device ends up
// updated. (The device reconnects to the broker by itself.)
func TestPushResumesAfterBrokerRestart(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Config{})
	var parts atomic.Int32
	restarted := make(chan struct{})
	d, port := startEmulator(t, "mqtt", func(cfg *emulator.Config) {
		cfg.MQTTBroker = b.URL
		cfg.Hooks.FlashWrite = func(w emulator.FlashWrite) error {
			if w.Kind == "part" && parts.Add(1) == 5 {
				go func() {
					defer close(restarted)
					b.Close()
					b = mqtttest.Start(t, mqtttest.Config{Addr: b.Addr})
				}()
			}
			return nil
		}
	})
	// --timeout bounds the reconnection too: the device is back on the
	// broker within its 2 s back-off.
	r := run(t, nil, "--port", port, "--timeout", "15s", "--json", "push", pushBundle(t, "2.0.0", 150<<10), "--commit")
	<-restarted
	if r.code != 0 {
		t.Fatalf("exit %d; stdout %s; stderr:\n%s\nstate %+v", r.code, r.stdout, r.stderr, d.State())
	}
	var doc struct {
		Result   string
		Version  string
		Transfer struct{ Resumes int }
	}
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil {
		t.Fatalf("%v: %s", err, r.stdout)
	}
	if doc.Result != "updated_committed" || doc.Version != "2.0.0" || doc.Transfer.Resumes < 1 {
		t.Fatalf("result %+v", doc)
	}
	if s := d.State(); s.Version != "2.0.0" || !s.Boot.IsCommitted {
		t.Fatalf("device state %+v", s)
	}
}

func TestPushWindowFlag(t *testing.T) {
	fw := pushBundle(t, "2.0.0", 1000)
	for _, tc := range []struct {
		port, window, want string
	}{
		{"http://127.0.0.1:1/rpc", "-1", "--window must be positive"},
		{"ws://127.0.0.1:1/rpc", "65", "at most 64"},
		{"/dev/ttyUSB7", "2", "a serial link sends one write at a time"},
	} {
		r := run(t, nil, "--port", tc.port, "push", fw, "--window", tc.window)
		if r.code != ExitUsage || !strings.Contains(r.stderr, tc.want) {
			t.Fatalf("--port %s --window %s: exit %d, stderr %q", tc.port, tc.window, r.code, r.stderr)
		}
	}
}

// The link goes away for good in the middle of a push: otactl gives up
// after --timeout, with exit 5, saying that the device's watchdog ends the
// update and the boot state is unchanged.
func TestPushGivesUpWhenTheLinkStaysDown(t *testing.T) {
	l := emulator.NewHTTPListener("127.0.0.1:0", nil)
	var parts atomic.Int32
	d, _ := startEmulator(t, "none", func(cfg *emulator.Config) {
		cfg.Listeners = []emulator.Listener{l}
		cfg.Hooks.FlashWrite = func(w emulator.FlashWrite) error {
			if w.Kind == "part" && parts.Add(1) == 5 {
				go l.Stop()
			}
			return nil
		}
	})
	var port string
	for _, li := range d.Listeners() {
		if li.Transport == "http" {
			port = li.Addr
		}
	}
	start := time.Now()
	r := run(t, nil, "--port", port, "--timeout", "2s", "push", pushBundle(t, "2.0.0", 150<<10))
	if r.code != ExitUnreachable {
		t.Fatalf("exit %d, want %d; stderr:\n%s", r.code, ExitUnreachable, r.stderr)
	}
	for _, want := range []string{"did not come back within 2s", "watchdog", "boot state is unchanged"} {
		if !strings.Contains(r.stderr, want) {
			t.Fatalf("stderr does not say %q:\n%s", want, r.stderr)
		}
	}
	if el := time.Since(start); el > 15*time.Second {
		t.Fatalf("gave up after %v", el)
	}
	if s := d.State(); s.OTAState != 1 || s.Boot != (emulator.BootState{IsCommitted: true}) {
		t.Fatalf("device state %+v: the update should still be running, the boot state untouched", s)
	}
}

// A device reset during a push over MQTT, where the link does not break
// with the device: the reply to the first OTA.Write is lost (the device
// went away before it got out), and the writes after it are answered 418
// "shutting down" before the device reboots. A 418 says the device is
// about to go: the writes still in flight are not waited for to their own
// timeouts (the first write's, 60 s, as devices erase flash then), and the
// push ends at once with the reset's verdict (exit 6, device_reset).
func TestPushResetWhileTheFirstWriteIsUnansweredEndsAtOnce(t *testing.T) {
	var firstID atomic.Int64
	var sawWrite atomic.Bool
	reboot := make(chan struct{})
	b := mqtttest.Start(t, mqtttest.Config{OnPublish: func(topic string, payload []byte) bool {
		var f struct {
			ID     int64  `json:"id"`
			Method string `json:"method"`
		}
		if json.Unmarshal(payload, &f) != nil {
			return false
		}
		if f.Method == "OTA.Write" && !sawWrite.Swap(true) {
			firstID.Store(f.ID)
			close(reboot)
		}
		// The device's answer to the first write is lost.
		return f.Method == "" && f.ID != 0 && f.ID == firstID.Load()
	}})
	d, port := startEmulator(t, "mqtt", func(cfg *emulator.Config) { cfg.MQTTBroker = b.URL })
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-reboot
		c := rpc.NewClient(pipe.New(d.Handler()), rpc.ClientOptions{})
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := c.Call(ctx, "Sys.Reboot", nil); err != nil {
			t.Errorf("Sys.Reboot: %v", err)
		}
	}()
	start := time.Now()
	r := run(t, nil, "--port", port, "--timeout", "5s", "--json", "push", pushBundle(t, "2.0.0", 150<<10))
	took := time.Since(start)
	<-done
	var doc struct {
		ExitCode int    `json:"exit_code"`
		Reason   string `json:"reason"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil || r.code != ExitUpdate || doc.Reason != "device_reset" {
		t.Fatalf("exit %d, --json %s (%v); stderr:\n%s", r.code, r.stdout, err, r.stderr)
	}
	// Well below the first write's 60 s (and the push's --timeout of 5 s
	// per write): the reboot takes 300 ms, finding it out a few calls.
	if took > 20*time.Second {
		t.Fatalf("the push ended %v after it began: it waited for a write the device could no longer answer", took.Round(time.Second))
	}
	if s := d.State(); s.Boots != 2 || s.Version != "1.0.0" || s.Boot != (emulator.BootState{IsCommitted: true}) {
		t.Fatalf("device state %+v", s)
	}
}

// Push chunks are sized from what each transport reports (its frame limit,
// the src and dst it writes) and from the credentials actually given: with
// a 600-byte user name, longer than any fixed reservation, every OTA.Write
// still fits the device's 4096 bytes (the emulator, as a device, refuses
// larger frames), in-frame (serial, MQTT) and at the HTTP and WebSocket
// level alike.
func TestPushWithALongUserNameOnEveryTransport(t *testing.T) {
	user := strings.Repeat("u", 600)
	const pw = "long-user-secret"
	file := htdigestFile(t, "SHA-256", map[string]string{user: pw})
	acl := `[{"method": "*", "acl": "+` + user + `"}]`
	for _, tr := range []string{"http", "ws", "serial", "mqtt"} {
		t.Run(tr, func(t *testing.T) {
			_, port := startEmulator(t, tr, func(c *emulator.Config) {
				c.Auth = &emulator.AuthConfig{File: file, Algo: "SHA-256", ACL: acl}
			})
			bundle := pushBundle(t, "2.0.0", 40_000)
			r := run(t, nil, "--port", port, "--rpc-creds", user+":"+pw, "--json", "push", bundle, "--commit")
			doc := jsonDoc(t, r.stdout)
			if r.code != 0 || doc["result"] != "updated_committed" {
				t.Fatalf("exit %d, stdout %s, stderr %s", r.code, r.stdout, r.stderr)
			}
		})
	}
}
