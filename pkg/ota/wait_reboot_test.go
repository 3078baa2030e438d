package ota_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/rpc"
)

// A reboot faster than a call: Sys.GetInfo is answered by the old instance
// (reboot pending), the next calls by the new firmware, and the device never
// looks away. The outcome must describe the new firmware, not a mix.
func TestWaitOutcomeProbeStraddlesReboot(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		before, res := pushed(t, ctx, d, 0)
		var once sync.Once
		d.srv.Handle("Sys.GetInfo", func(context.Context, *rpc.Request) (any, error) {
			d.mu.Lock()
			defer d.mu.Unlock()
			info := d.sysInfoLocked()
			once.Do(func() { // reboots right after answering
				time.Sleep(300 * time.Millisecond)
				d.fw, d.bootedAt = d.newFW, time.Now()
				d.boot = ota.BootState{ActiveSlot: 1, RevertSlot: 0, CommitTimeout: 300}
				d.status = ota.Status{State: ota.StateIdle}
			})
			return info, nil
		})
		o, c, err := ota.WaitOutcome(ctx, ota.WaitOptions{Dial: d.dial(t), Before: before, Accepted: res.Confirmed, Expect: d.newFW})
		if err != nil {
			t.Fatalf("%v (outcome %+v)", err, o)
		}
		c.Close()
		d.mu.Lock()
		bootedAt := d.bootedAt
		d.mu.Unlock()
		// Whole-second uptimes place the boot up to 1 s late.
		want := bootedAt.Add(300 * time.Second)
		if o.Result != ota.UpdatedUncommitted || o.Info.FWVersion != "1.1" || o.CommitDeadline.Before(want) || o.CommitDeadline.Sub(want) >= time.Second {
			t.Fatalf("outcome %+v (info %+v), want the new firmware's, deadline %v", o, o.Info, bootedAt.Add(300*time.Second))
		}
	})
}

// On a slow link the uptime must be referred to the moment Sys.GetInfo
// answered, not to the end of the probe: else a device that never rebooted
// looks rebooted, and a failed update reads as a rollback.
func TestWaitOutcomeSlowLinkIsNotAReboot(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		time.Sleep(time.Hour)
		dial := d.slowDial(t, 2500*time.Millisecond)
		c, _ := dial(ctx)
		before, err := ota.New(c).Observe(ctx)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		// The update failed on the device; its reply was lost.
		d.mu.Lock()
		d.status = ota.Status{State: ota.StateError, Msg: "Wrong platform"}
		d.mu.Unlock()
		o, c, err := ota.WaitOutcome(ctx, ota.WaitOptions{Dial: dial, Before: before})
		if c != nil {
			c.Close()
		}
		if o == nil || o.Result != ota.NotApplied || !errors.Is(err, ota.ErrUpdateFailed) {
			t.Fatalf("outcome %+v, err %v; want not applied", o, err)
		}
		contains(t, err, "Wrong platform")
	})
}

// The device comes back on the new firmware just as its commit timer
// expires (a commit timeout shorter than the reconnect backoff): the boot
// state already points back at the old slot, committed, and it reboots
// into it a moment later. That is a rollback, not a committed update.
func TestWaitOutcomeRollbackPendingIsNotCommitted(t *testing.T) {
	for _, expect := range []bool{true, false} {
		bubble(t, func(t *testing.T, ctx context.Context) {
			d := newFakeDev(t)
			before, res := pushed(t, ctx, d, 3*time.Second)
			oldFW := d.fw
			d.rebootInto(3, d.newFW, ota.BootState{ActiveSlot: 0, RevertSlot: 0, IsCommitted: true})
			inner := d.dial(t)
			ups := 0
			dial := func(ctx context.Context) (*rpc.Client, error) {
				c, err := inner(ctx)
				if err == nil {
					if ups++; ups == 1 { // right after this probe: the reboot into the old slot
						d.mu.Lock()
						d.rebootInto(1, oldFW, ota.BootState{ActiveSlot: 0, RevertSlot: 0, IsCommitted: true})
						d.mu.Unlock()
					}
				}
				return c, err
			}
			opts := ota.WaitOptions{Dial: dial, Before: before, Accepted: res.Confirmed}
			if expect {
				opts.Expect = d.newFW
			}
			o, c, err := ota.WaitOutcome(ctx, opts)
			if c != nil {
				c.Close()
			}
			if o == nil || o.Result != ota.RolledBack || o.Info.FWVersion != "1.0" || !errors.Is(err, ota.ErrUpdateFailed) {
				t.Fatalf("expect=%v: outcome %+v, err %v; want rolled back", expect, o, err)
			}
		})
	}
}

// The reply to OTA.Update was lost while the device still downloads (a
// long download over a slow network): as long as OTA.Status shows the
// update in progress, "did not reboot" is no verdict.
func TestWaitOutcomeWaitsWhileDownloading(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		time.Sleep(time.Hour)
		before, err := ota.New(d.client(t)).Observe(ctx)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		d.mu.Lock()
		d.status = ota.Status{State: ota.StateProgress, ProgressPercent: 10}
		d.mu.Unlock()
		inner := d.dial(t)
		done := false
		dial := func(ctx context.Context) (*rpc.Client, error) {
			d.mu.Lock()
			if !done && time.Since(start) > 3*time.Minute {
				done = true
				d.rebootInto(2, d.newFW, ota.BootState{ActiveSlot: 1, RevertSlot: 0, CommitTimeout: 300})
			} else if !done {
				d.status.ProgressPercent = int(time.Since(start) * 90 / (3 * time.Minute))
			}
			d.mu.Unlock()
			return inner(ctx)
		}
		o, c, err := ota.WaitOutcome(ctx, ota.WaitOptions{Dial: dial, Before: before, Expect: d.newFW, RebootTimeout: time.Minute})
		if c != nil {
			c.Close()
		}
		if err != nil || o.Result != ota.UpdatedUncommitted {
			t.Fatalf("outcome %+v, err %v; want updated", o, err)
		}
	})
	// Still downloading when ctx ends: a timeout that says so, no verdict.
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		time.Sleep(time.Hour)
		before, _ := ota.New(d.client(t)).Observe(ctx)
		d.mu.Lock()
		d.status = ota.Status{State: ota.StateProgress, ProgressPercent: 42}
		d.mu.Unlock()
		wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		defer cancel()
		o, c, err := ota.WaitOutcome(wctx, ota.WaitOptions{Dial: d.dial(t), Before: before, RebootTimeout: time.Minute})
		if o != nil || c != nil || !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ota.ErrUpdateFailed) {
			t.Fatalf("outcome %+v, err %v", o, err)
		}
		contains(t, err, "update in progress", "42%")
	})
}

// Old firmware: no OTA.Status (404), uptime as a float. Right after the
// accepted update the device still answers from its old instance with the
// new slot pending: that is no reboot yet; after the reboot, the verdict
// follows what booted.
func TestWaitOutcomeOldFirmwareNoStatus(t *testing.T) {
	for _, crash := range []bool{false, true} {
		bubble(t, func(t *testing.T, ctx context.Context) {
			d := newFakeDev(t)
			d.srv.Handle("OTA.Status", func(context.Context, *rpc.Request) (any, error) {
				return nil, rpc.Errorf(404, "No handler for OTA.Status")
			})
			d.srv.Handle("Sys.GetInfo", func(context.Context, *rpc.Request) (any, error) {
				d.mu.Lock()
				defer d.mu.Unlock()
				info := d.sysInfoLocked()
				info["uptime"] = time.Since(d.bootedAt).Seconds()
				return info, nil
			})
			time.Sleep(time.Hour)
			before, err := ota.New(d.client(t)).Observe(ctx)
			if err != nil {
				t.Fatal(err)
			}
			// OTA.Update replied: the new slot boots next; the reboot comes
			// after three probes.
			d.mu.Lock()
			d.boot = ota.BootState{ActiveSlot: 1, RevertSlot: 0, CommitTimeout: 300}
			d.mu.Unlock()
			fw, bs := d.newFW, ota.BootState{ActiveSlot: 1, RevertSlot: 0, CommitTimeout: 300}
			if crash {
				fw, bs = d.fw, ota.BootState{ActiveSlot: 0, RevertSlot: 0, IsCommitted: true}
			}
			dial := d.rebootOnDial(t, 4, 2, fw, bs)
			ev := &events{}
			o, c, err := ota.WaitOutcome(ctx, ota.WaitOptions{Dial: dial, Before: before, Accepted: true, OnEvent: ev.fn})
			if c != nil {
				c.Close()
			}
			want := ota.UpdatedUncommitted
			if crash {
				want = ota.RolledBack
			}
			if o == nil || o.Result != want || ev.count(ota.EventNotRebooted) != 3 {
				t.Fatalf("crash=%v: outcome %+v, err %v, events %v", crash, o, err, ev.kinds())
			}
		})
	}
}
