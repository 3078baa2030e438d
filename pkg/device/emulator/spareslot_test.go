package emulator

import (
	"context"
	"encoding/base64"
	"sync/atomic"
	"testing"
)

// Found by the power-cut matrix (flow set-boot-state-then-update): after
// OTA.SetBootState pointed the next boot at the spare slot (the slot after
// the running one), an update or a snapshot erased that very slot, so a
// power cut before it finished left a boot state pointing at an empty slot:
// the device was bricked. The device now refuses to write the slot its
// next boot uses ("Failed to init updater", "Failed to create snapshot"),
// writing nothing, and updates normally once it has booted that slot.
func TestUpdateSparesTheNextBootSlot(t *testing.T) {
	var armed atomic.Bool
	var writes atomic.Int32
	cut := PowerCutAt(1, "part")
	hook := func(w FlashWrite) error {
		if !armed.Load() {
			return nil
		}
		writes.Add(1)
		return cut(w)
	}
	e := newEnv(t, func(c *Config) { c.Hooks.FlashWrite = hook })
	e.update(fw{version: "2.0.0"}, 300)
	e.mustCall("OTA.Commit", nil)
	// Slot 1 runs, committed; the next boot is to use slot 0 (1.0.0).
	e.mustCall("OTA.SetBootState", map[string]any{"active_slot": 0})
	armed.Store(true)

	// The call ends with its reply, or unanswered at a power cut.
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		select {
		case <-e.d.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	_, err := e.c.Call(ctx, "OTA.Update", map[string]any{"url": e.serve("/v3.zip", makeBundle(t, fw{version: "3.0.0"})), "commit_timeout": 300})
	cancel()
	if e.d.State().PoweredOff {
		// What happened before the fix: slot 0 erased, power cut at
		// its first page.
		e.d.Close()
		d, err := New(e.config(nil))
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		t.Fatalf("the update erased slot 0, which the next boot uses; after a power cut: %v", d.Start(t.Context()))
	}
	wantErr(t, err, -1, "Failed to init updater")
	_, err = e.call("OTA.CreateSnapshot", nil)
	wantErr(t, err, -1, "Failed to create snapshot")
	if n := writes.Load(); n != 0 {
		t.Fatalf("%d flash writes for refused calls", n)
	}
	armed.Store(false)

	// The next boot runs slot 0; from there updates write slot 1.
	e.mustCall("Sys.Reboot", nil)
	e.waitBoots(3)
	if s := e.d.State(); s.Version != "1.0.0" || s.RunningSlot != 0 || s.Boot != (BootState{ActiveSlot: 0, IsCommitted: true, RevertSlot: 0}) {
		t.Fatalf("after the reboot: %+v", s)
	}
	e.update(fw{version: "3.0.0"}, 300)
	if s := e.d.State(); s.Version != "3.0.0" || s.RunningSlot != 1 {
		t.Fatalf("the update after the reboot: %+v", s)
	}
}

// The same hole from the other side: OTA.SetBootState during an update,
// pointing the next boot at the slot being written, made a power cut before
// the update finished brick the device. The device refuses it (-3, as for
// an invalid slot) and a cut then lands on the old firmware.
func TestSetBootStateSparesTheSlotBeingWritten(t *testing.T) {
	e := newEnv(t, nil)
	b := makeBundle(t, fw{version: "2.0.0"})
	e.mustCall("OTA.Begin", map[string]any{"size": len(b), "commit_timeout": 300})
	e.mustCall("OTA.Write", map[string]any{"offset": 0, "data": base64.StdEncoding.EncodeToString(b[:2*PageSize])})
	for _, p := range []map[string]any{
		{"active_slot": 1},
		{"is_committed": false, "revert_slot": 1},
	} {
		_, err := e.call("OTA.SetBootState", p)
		wantErr(t, err, -3, "")
	}
	if s := e.d.State(); s.Persisted != committed0 || s.Boot != committed0 {
		t.Fatalf("boot state changed: %+v", s)
	}
	e.d.PowerCut()
	e.waitDone("power cut")
	e.d.Close()
	e.start(nil)
	if s := e.d.State(); s.Version != "1.0.0" || s.Boot != committed0 {
		t.Fatalf("after the power cut: %+v", s)
	}
	e.update(fw{version: "2.0.0"}, 300)
}
