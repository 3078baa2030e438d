package emulator

import (
	"encoding/base64"
	"strconv"
	"testing"
	"time"
)

// The pre-reboot window (issue 7, defect 12): between the reply that
// schedules a reboot and the reboot, a device answers every known method
// with 418 "shutting down in N ms" (rpc-common's pre-handler, for the
// last 100 ms before the reboot), then goes off. The wait runs on the
// device's clock.
func TestRebootLockout(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.RebootAfter = DefaultRebootAfter })
	lockedOut := func(ms int) {
		t.Helper()
		for _, m := range []string{"Sys.GetInfo", "OTA.GetBootState", "OTA.Status", "OTA.Commit", "OTA.Update", "Sys.Reboot"} {
			_, err := e.call(m, map[string]any{"url": "http://127.0.0.1:1/fw.zip"})
			wantErr(t, err, 418, "shutting down in "+strconv.Itoa(ms)+" ms")
		}
		// As on a device, an unknown method is answered before the gate.
		_, err := e.call("No.Such", nil)
		wantErr(t, err, 404, "No handler for No.Such")
		if s := e.d.State(); !s.Online || !s.RebootPending {
			t.Fatalf("in the window: %+v", s)
		}
	}

	// Sys.Reboot without delay_ms: 100 ms, all of it in the window.
	e.mustCall("Sys.Reboot", nil)
	lockedOut(100)
	e.clock.Advance(60 * time.Millisecond)
	lockedOut(40)
	e.waitBoots(2)
	e.mustCall("Sys.GetInfo", nil)

	// A longer delay answers normally until the last 100 ms.
	e.mustCall("Sys.Reboot", map[string]any{"delay_ms": 5000})
	e.clock.Advance(4899 * time.Millisecond)
	e.mustCall("Sys.GetInfo", nil)
	e.clock.Advance(time.Millisecond)
	lockedOut(100)
	e.waitBoots(3)

	// A negative delay is refused, as on a device, and nothing happens.
	_, err := e.call("Sys.Reboot", map[string]any{"delay_ms": -1})
	wantErr(t, err, 400, "invalid delay value")
	if s := e.d.State(); s.RebootPending {
		t.Fatalf("a refused Sys.Reboot scheduled a reboot: %+v", s)
	}

	// A successful OTA.Update: the reply, then the window.
	url := e.serve("/fw.zip", makeBundle(t, fw{version: "2.0.0"}))
	if _, err := e.call("OTA.Update", map[string]any{"url": url, "commit_timeout": 300}); err != nil {
		t.Fatal(err)
	}
	lockedOut(100)
	e.waitBoots(4)

	// OTA.Revert of the uncommitted firmware.
	e.mustCall("OTA.Revert", nil)
	lockedOut(100)
	e.waitBoots(5)
	if bs := e.bootState(); bs != committed0 {
		t.Fatalf("after the revert: %+v", bs)
	}

	// A push: OTA.End, then the window.
	b := makeBundle(t, fw{version: "2.0.1"})
	e.mustCall("OTA.Begin", map[string]any{"size": len(b), "commit_timeout": 300})
	e.mustCall("OTA.Write", map[string]any{"offset": 0, "data": base64.StdEncoding.EncodeToString(b)})
	if _, err := e.call("OTA.End", nil); err != nil {
		t.Fatal(err)
	}
	lockedOut(100)
	s := e.waitBoots(6)
	if s.Version != "2.0.1" || s.RebootPending {
		t.Fatalf("after the push: %+v", s)
	}
}

// OTA.Commit schedules no reboot, and neither does a failed update: no
// window follows them.
func TestNoLockoutWithoutReboot(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.RebootAfter = DefaultRebootAfter })
	e.update(fw{version: "2.0.0"}, 300)
	e.mustCall("OTA.Commit", nil)
	e.mustCall("Sys.GetInfo", nil)
	_, err := e.call("OTA.Update", map[string]any{"url": e.srv.URL + "/missing.zip"})
	wantErr(t, err, -1, "Invalid HTTP response code 404")
	e.mustCall("Sys.GetInfo", nil)
	if s := e.d.State(); s.RebootPending {
		t.Fatalf("%+v", s)
	}
}
