package emulator

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// TestPowerCutEveryWrite cuts the power at each flash write of update →
// first boot → commit in turn (as MCUboot's simulator does) and powers the
// device on again: it must always come up, on the old firmware committed,
// or on the new one for its first boot again when the cut fell between the
// update's last boot-state write and the first boot's tombstone. Never on
// the new one committed: every cut comes before the commit lands.
func TestPowerCutEveryWrite(t *testing.T) {
	b := makeBundle(t, fw{version: "2.0.0"})
	// flow runs the update and commits; it returns early at a power cut.
	flow := func(t *testing.T, e *env) {
		c, url := e.c, e.serve("/fw.zip", b) // e.c changes at power on
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
			defer cancel()
			c.Call(ctx, "OTA.Update", map[string]any{"url": url, "commit_timeout": 300})
		}()
		deadline := time.Now().Add(waitLimit)
		for time.Now().Before(deadline) {
			e.fireReboot()
			s := e.d.State()
			if s.PoweredOff {
				return
			}
			if s.Boots >= 2 && s.Online && !s.Boot.IsCommitted {
				// A cut during the commit leaves the call unanswered.
				ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
				_, err := e.c.Call(ctx, "OTA.Commit", nil)
				cancel()
				if err == nil {
					return
				}
			}
			time.Sleep(time.Millisecond)
		}
		t.Fatalf("flow did not finish: %+v", e.d.State())
	}
	// hook counts (and, from cutAt on, cuts at) the writes of the flow.
	hook := func(counting *atomic.Bool, n *atomic.Int64, cutAt int64, cut *atomic.Value) func(FlashWrite) error {
		return func(w FlashWrite) error {
			if !counting.Load() {
				return nil
			}
			if cutAt > 0 && n.Add(1) >= cutAt {
				if cut.Load() == nil {
					cut.Store(w)
				}
				return ErrPowerCut
			}
			if cutAt == 0 {
				n.Add(1)
			}
			return nil
		}
	}
	var total atomic.Int64
	t.Run("count", func(t *testing.T) {
		var on atomic.Bool
		e := newEnv(t, func(c *Config) { c.Hooks.FlashWrite = hook(&on, &total, 0, &atomic.Value{}) })
		on.Store(true)
		flow(t, e)
		if bs := e.bootState(); bs != (BootState{ActiveSlot: 1, IsCommitted: true}) {
			t.Fatalf("flow ends with %+v", bs)
		}
	})
	if total.Load() < 10 {
		t.Fatalf("only %d flash writes counted", total.Load())
	}
	var firstBoots atomic.Int64
	for i := int64(1); i <= total.Load(); i++ {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			var on atomic.Bool
			var n atomic.Int64
			var where atomic.Value
			e := newEnv(t, func(c *Config) { c.Hooks.FlashWrite = hook(&on, &n, i, &where) })
			on.Store(true)
			flow(t, e)
			e.waitDone(fmt.Sprintf("no power cut at write %d", i))
			on.Store(false)
			e.d.Close()
			e.start(nil)
			s := e.waitUntil("power on", func(s State) bool { return s.Online || s.Bricked })
			if s.Bricked {
				t.Fatalf("cut at %+v: the device is bricked", where.Load())
			}
			bs := e.bootState()
			v := e.info()["fw_version"]
			old := v == "1.0.0" && bs == committed0
			newFirstBoot := v == "2.0.0" && bs == uncommit1
			if !old && !newFirstBoot {
				t.Fatalf("cut at %+v: running %v with %+v", where.Load(), v, bs)
			}
			if newFirstBoot {
				firstBoots.Add(1)
			}
		})
	}
	// The temp file and the rename of the update's boot-state write.
	if firstBoots.Load() != 2 {
		t.Errorf("%d cuts led to the new firmware's first boot, want 2", firstBoots.Load())
	}
}
