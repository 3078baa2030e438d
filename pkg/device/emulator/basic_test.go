package emulator

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/rpc/frame"
)

func TestFactoryFirmware(t *testing.T) {
	e := newEnv(t, nil)
	if bs := e.bootState(); bs != (BootState{ActiveSlot: 0, IsCommitted: true, RevertSlot: 0}) {
		t.Fatalf("factory boot state %+v", bs)
	}
	info := e.info()
	if info["fw_version"] != DefaultFactoryVersion || info["id"] != DefaultID || info["arch"] != "esp32" || info["fw_id"] != "factory" {
		t.Fatalf("info %v", info)
	}
	var methods []string
	json.Unmarshal(e.mustCall("RPC.List", nil), &methods)
	for _, m := range []string{"OTA.Update", "OTA.Commit", "OTA.Revert", "OTA.CreateSnapshot", "OTA.GetBootState", "OTA.SetBootState", "OTA.Status", "OTA.Begin", "OTA.Write", "OTA.End", "Sys.GetInfo", "Sys.Reboot", "RPC.List"} {
		if !slices.Contains(methods, m) {
			t.Errorf("RPC.List lacks %s", m)
		}
	}
	var st map[string]any
	json.Unmarshal(e.mustCall("OTA.Status", nil), &st)
	if st["state"] != 0.0 || st["msg"] != "idle" || st["is_committed"] != true {
		t.Fatalf("status %v", st)
	}
	e.clock.Advance(42 * time.Second)
	if up := e.info()["uptime"]; up != 42.0 {
		t.Fatalf("uptime %v", up)
	}
	if _, err := e.call("No.Such", nil); err == nil {
		t.Fatal("unknown method answered")
	}
}

func TestUpdateCommit(t *testing.T) {
	e := newEnv(t, nil)
	os.WriteFile(filepath.Join(e.d.FSDir(), "user.txt"), []byte("keep me"), 0o644)
	e.update(fw{version: "2.0.0"}, 300)
	if bs := e.bootState(); bs != (BootState{ActiveSlot: 1, IsCommitted: false, RevertSlot: 0, CommitTimeout: 300}) {
		t.Fatalf("after update: %+v", bs)
	}
	if v := e.info()["fw_version"]; v != "2.0.0" {
		t.Fatalf("running %v", v)
	}
	s := e.d.State()
	if s.Persisted != (BootState{ActiveSlot: 0, IsCommitted: true, RevertSlot: 0}) || !s.CommitTimerArmed {
		t.Fatalf("first boot did not tombstone / arm the timer: %+v", s)
	}
	// FS merge: old files copied, the new slot's own files kept.
	for name, want := range map[string]string{"user.txt": "keep me", "new.txt": "new in 2.0.0"} {
		b, err := os.ReadFile(filepath.Join(e.d.FSDir(), name))
		if err != nil || string(b) != want {
			t.Fatalf("fs %s: %q %v", name, b, err)
		}
	}
	if _, err := os.Stat(filepath.Join(e.d.FSDir(), "conf9.json")); err != nil {
		t.Fatal("persisted config not merged")
	}
	e.mustCall("OTA.Commit", nil)
	if bs := e.bootState(); bs != (BootState{ActiveSlot: 1, IsCommitted: true, RevertSlot: 0}) {
		t.Fatalf("after commit: %+v", bs)
	}
	if e.d.State().CommitTimerArmed {
		t.Fatal("commit timer still armed")
	}
	// Timer time passes: nothing happens. Reboot: still the new firmware.
	e.clock.Advance(time.Hour)
	e.d.Reboot()
	e.waitBoots(3)
	if v := e.info()["fw_version"]; v != "2.0.0" {
		t.Fatalf("after reboot running %v", v)
	}
}

func TestUpdateNoCommitReverts(t *testing.T) {
	e := newEnv(t, nil)
	e.update(fw{version: "2.0.0"}, 300)
	e.clock.Advance(299 * time.Second)
	if s := e.d.State(); s.Boots != 2 || s.Boot.IsCommitted {
		t.Fatalf("reverted too early: %+v", s)
	}
	e.clock.Advance(time.Second)
	e.waitBoots(3)
	if bs := e.bootState(); bs != (BootState{ActiveSlot: 0, IsCommitted: true, RevertSlot: 0}) {
		t.Fatalf("after commit timeout: %+v", bs)
	}
	if v := e.info()["fw_version"]; v != DefaultFactoryVersion {
		t.Fatalf("running %v", v)
	}
}

func TestUpdateCommitTimeoutZeroCommitsAtOnce(t *testing.T) {
	e := newEnv(t, nil)
	e.update(fw{version: "2.0.0"}, 0)
	if bs := e.bootState(); bs != (BootState{ActiveSlot: 1, IsCommitted: true, RevertSlot: 0}) {
		t.Fatalf("%+v", bs)
	}
	if p := e.d.State().Persisted; p != (BootState{ActiveSlot: 1, IsCommitted: true, RevertSlot: 0}) {
		t.Fatalf("persisted %+v", p)
	}
	// A second update goes to slot 0 and reverts to 1.
	e.update(fw{version: "3.0.0"}, 10)
	if bs := e.bootState(); bs != (BootState{ActiveSlot: 0, IsCommitted: false, RevertSlot: 1, CommitTimeout: 10}) {
		t.Fatalf("%+v", bs)
	}
}

func TestRestartResumes(t *testing.T) {
	e := newEnv(t, nil)
	e.update(fw{version: "2.0.0"}, 0)
	e.d.Close()
	e.start(nil)
	if v := e.info()["fw_version"]; v != "2.0.0" {
		t.Fatalf("after restart: %v", v)
	}
}

// OTA.Update's success reply is the old devices' code-0 error, which
// rpc.Client hides: check the frame itself.
func TestUpdateSuccessFrame(t *testing.T) {
	e := newEnv(t, nil)
	params, _ := json.Marshal(map[string]any{"url": e.serve("/fw.zip", makeBundle(t, fw{version: "2.0.0"}))})
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	resp := e.d.Handler().HandleFrame(ctx, &frame.Frame{ID: 7, Src: "test", Method: "OTA.Update", Params: params})
	if resp == nil || resp.ID != 7 || resp.Error == nil || resp.Error.Code != 0 || resp.Error.Message != "Update applied, finalizing" {
		t.Fatalf("reply %+v (error %+v)", resp, resp.Error)
	}
	e.waitBoots(2)
}
