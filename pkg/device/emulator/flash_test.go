package emulator

import (
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// A leftover temporary file in the state dir that is a symlink (planted,
// or a link the user made) must not redirect a boot-state write outside
// the state dir.
func TestBootStateWriteDoesNotFollowSymlink(t *testing.T) {
	e := newEnv(t, nil)
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(e.dir, "bootstate.json.tmp")); err != nil {
		t.Fatal(err)
	}
	e.mustCall("OTA.SetBootState", map[string]any{"commit_timeout": 7})
	if b, _ := os.ReadFile(victim); string(b) != "precious" {
		t.Fatalf("boot state written through a symlink into %s: %q", victim, b)
	}
	fi, err := os.Lstat(filepath.Join(e.dir, "bootstate.json"))
	if err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("bootstate.json is not a regular file: %v %v", fi, err)
	}
	if p := e.d.State().Persisted; p.CommitTimeout != 7 {
		t.Fatalf("persisted %+v", p)
	}
}

// Hooks see the running device's flash writes, not the factory image that
// New writes to a new state dir: PowerCutAt(1, "bootstate") on a fresh
// dir cuts at the update's boot-state write, not inside New.
func TestHookSkipsFactoryImage(t *testing.T) {
	var first atomic.Value
	cut := PowerCutAt(1, "bootstate")
	e := newEnv(t, func(c *Config) {
		c.Hooks.FlashWrite = func(w FlashWrite) error {
			first.CompareAndSwap(nil, w)
			return cut(w)
		}
	})
	if w := first.Load(); w != nil {
		t.Fatalf("the hook saw a write before the device ran: %+v", w)
	}
	go e.call("OTA.Update", map[string]any{"url": e.serve("/fw.zip", makeBundle(t, fw{version: "2.0.0"})), "commit_timeout": 300})
	select {
	case <-e.d.Done():
	case <-time.After(waitLimit):
		t.Fatal("no power cut")
	}
	if w := first.Load().(FlashWrite); w.Seq != 1 || w.Kind != "erase" {
		t.Fatalf("first write seen %+v, want Seq 1, the erase of the spare slot", w)
	}
}
