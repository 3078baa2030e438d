package cli

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/device/emulator"
	"github.com/otactl/otactl/pkg/transport/mqtt/mqtttest"
)

// An update over MQTT, from the pre-check through the transfer, the wait
// for the device's reboot and the commit, holds one broker connection, and
// otactl leaves none behind when it ends; so does a push that regains the
// device after it was reset in the middle (issue 8: the outcome wait and a
// push's reconnects reuse the process's session).
func TestMQTTOneBrokerConnectionPerRun(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Config{})
	var d *emulator.Device
	var parts atomic.Int32
	var armed atomic.Bool
	d, port := startEmulator(t, "mqtt", func(cfg *emulator.Config) {
		cfg.MQTTBroker = b.URL
		cfg.Hooks.FlashWrite = func(w emulator.FlashWrite) error {
			if w.Kind == "part" && armed.Load() && parts.Add(1) == 5 {
				armed.Store(false)
				go d.Reboot()
			}
			return nil
		}
	})

	r := run(t, nil, "--port", port, "--timeout", "5s", "update", "--file", pushBundle(t, "2.0.0", 20<<10), "--serve-addr", "127.0.0.1", "--commit")
	if r.code != 0 {
		t.Fatalf("update: exit %d, stdout %q, stderr:\n%s", r.code, r.stdout, r.stderr)
	}
	if s := d.State(); s.Version != "2.0.0" || !s.Boot.IsCommitted || s.Boots < 2 {
		t.Fatalf("device state %+v", s)
	}
	if n := b.Connects("otactl-"); n != 1 {
		t.Errorf("update connected to the broker %d times, want 1", n)
	}
	noClientsLeft(t, b, "the update")

	// A reset mid-push: otactl regains the device (ota.PushOptions.Redial)
	// and finds the update lost.
	armed.Store(true)
	r = run(t, nil, "--port", port, "--timeout", "5s", "push", pushBundle(t, "3.0.0", 150<<10))
	if r.code != ExitUpdate {
		t.Fatalf("push with a reset: exit %d, stdout %q, stderr:\n%s", r.code, r.stdout, r.stderr)
	}
	if s := d.State(); s.Version != "2.0.0" {
		t.Fatalf("device state %+v", s)
	}
	if n := b.Connects("otactl-"); n != 2 {
		t.Errorf("the push connected to the broker %d times, want 1", n-1)
	}
	noClientsLeft(t, b, "the push")
}

// noClientsLeft checks that otactl's broker connections are gone (the
// broker notices a disconnect a moment after the client sent it).
func noClientsLeft(t *testing.T, b *mqtttest.Broker, after string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for b.Clients("otactl-") != 0 {
		if time.Now().After(deadline) {
			t.Errorf("%d otactl connections still open after %s ended", b.Clients("otactl-"), after)
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}
