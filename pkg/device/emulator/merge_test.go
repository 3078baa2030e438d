package emulator

import (
	"bytes"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
)

// Found by the power-cut matrix: a power cut while the first boot copied a
// file from the old slot's filesystem left that file half-written in the
// new slot (the first boot's tombstone was already on flash, so the device
// came back on the old firmware). When the new slot was booted again
// (OTA.SetBootState), the merge skipped the file, as it never overwrites
// one, and the firmware ran with a truncated config. A merged file now
// appears whole or not at all, so the next merge copies it.
func TestMergeCopiesWholeFiles(t *testing.T) {
	var armed atomic.Bool
	cut := PowerCutAt(1, "fs")
	e := newEnv(t, func(c *Config) {
		c.Hooks.FlashWrite = func(w FlashWrite) error {
			if armed.Load() {
				return cut(w)
			}
			return nil
		}
	})
	conf := filepath.Join(e.dir, "slot0", "fs", "conf9.json")
	want, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	armed.Store(true)
	go e.call("OTA.Update", map[string]any{"url": e.serve("/fw.zip", makeBundle(t, fw{version: "2.0.0"})), "commit_timeout": 300})
	e.waitDone("no power cut in the first boot's merge")
	armed.Store(false)
	e.start(nil)
	if bs := e.bootState(); bs != committed0 {
		t.Fatalf("after the cut: %+v", bs)
	}
	// Boot slot 1 on trial again: its first boot merges once more.
	e.mustCall("OTA.SetBootState", map[string]any{"active_slot": 1, "is_committed": false, "revert_slot": 0, "commit_timeout": 60})
	e.mustCall("Sys.Reboot", nil)
	e.waitBoots(2)
	if s := e.d.State(); s.Version != "2.0.0" || s.Boot.IsCommitted {
		t.Fatalf("after the reboot: %+v", s)
	}
	got, err := os.ReadFile(filepath.Join(e.dir, "slot1", "fs", "conf9.json"))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the new slot's conf9.json is %q (%v), want the old slot's %q", got, err, want)
	}
	files, err := listFiles(filepath.Join(e.dir, "slot1", "fs"))
	if err != nil || len(files) != 2 { // conf9.json and the bundle's new.txt
		t.Fatalf("the new slot's filesystem holds %q (%v)", files, err)
	}
}
