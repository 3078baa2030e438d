package emulator

import (
	"context"
	"strings"
	"testing"
	"time"
)

// A committed firmware that crashes at boot bricks the device: it is off
// for good, so Done is closed (the command exits on it), and powering it
// on again fails with a message instead of "starting" with no transports.
func TestBrickedDeviceIsDone(t *testing.T) {
	e := newEnv(t, nil)
	e.update(fw{version: "2.0.0", behavior: BehaviorCrashOnBoot}, 300)
	if bs := e.bootState(); bs != committed0 {
		t.Fatalf("crash_on_boot did not revert: %+v", bs)
	}
	// Point the next boot at the crashing firmware, committed.
	e.mustCall("OTA.SetBootState", map[string]any{"active_slot": 1, "is_committed": true})
	e.d.Reboot()
	select {
	case <-e.d.Done():
	case <-time.After(waitLimit):
		t.Fatalf("bricked device not done: %+v", e.d.State())
	}
	if s := e.d.State(); !s.Bricked || s.Online {
		t.Fatalf("%+v", s)
	}
	e.d.Close()
	d, err := New(e.config(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "bricked") {
		t.Fatalf("Start of a bricked device: %v", err)
	}
}
