package ota_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/rpc"
)

// pushed runs the usual start of an update against d: the device has been
// up for an hour, Observe, then Push (accepted, device finalised).
func pushed(t *testing.T, ctx context.Context, d *fakeDev, commitTimeout time.Duration) (ota.Observation, ota.PushResult) {
	t.Helper()
	time.Sleep(time.Hour)
	c := d.client(t)
	dev := ota.New(c)
	before, err := dev.Observe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	data := payload(2000)
	res, err := dev.Push(ctx, bytes.NewReader(data), int64(len(data)), ota.PushOptions{CommitTimeout: commitTimeout})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	return before, res
}

func TestWaitOutcomeUpdated(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		before, res := pushed(t, ctx, d, 0)
		// The device reboots: 4 dials fail, then it runs the new firmware.
		d.rebootInto(4, d.newFW, ota.BootState{ActiveSlot: 1, RevertSlot: 0, IsCommitted: false, CommitTimeout: 300})
		ev := &events{}
		start := time.Now()
		o, c, err := ota.WaitOutcome(ctx, ota.WaitOptions{Dial: d.dial(t), Before: before, Accepted: res.Confirmed, Expect: d.newFW, OnEvent: ev.fn})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		bootedAt := d.bootedAt
		if o.Result != ota.UpdatedUncommitted || o.After.ActiveSlot != 1 || o.Before.ActiveSlot != 0 ||
			o.Info.FWVersion != "1.1" || o.BeforeInfo.FWVersion != "1.0" || o.Attempts != 5 {
			t.Fatalf("outcome %+v", o)
		}
		if !o.CommitDeadline.Equal(bootedAt.Add(300 * time.Second)) {
			t.Fatalf("commit deadline %v, want boot %v + 300 s", o.CommitDeadline, bootedAt)
		}
		// Backoff 250 ms, 500 ms, 1 s, 2 s between the failed attempts.
		if el := time.Since(start); el != 3750*time.Millisecond {
			t.Fatalf("waited %v", el)
		}
		if ev.count(ota.EventWaiting) != 4 || ev.count(ota.EventBack) != 1 {
			t.Fatalf("events %v", ev.kinds())
		}
		if o.Err() != nil {
			t.Fatal(o.Err())
		}
		// The returned client works: commit after a health check.
		checks := 0
		d.srv.Handle("Health.Check", func(context.Context, *rpc.Request) (any, error) {
			checks++
			return map[string]bool{"ok": true}, nil
		})
		d.srv.Handle("OTA.Commit", func(context.Context, *rpc.Request) (any, error) {
			d.mu.Lock()
			defer d.mu.Unlock()
			d.boot.IsCommitted = true
			return nil, nil
		})
		bs, err := ota.New(c).CommitAfterHealthCheck(ctx, ota.HealthOptions{Method: "Health.Check", OnEvent: ev.fn})
		if err != nil || !bs.IsCommitted || bs.ActiveSlot != 1 || checks != 1 {
			t.Fatalf("commit: %+v, %v", bs, err)
		}
		if ev.count(ota.EventHealthCheck) != 1 || ev.count(ota.EventCommitted) != 1 {
			t.Fatalf("events %v", ev.kinds())
		}
	})
}

func TestWaitOutcomeCommittedAtBoot(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		before, res := pushed(t, ctx, d, ota.AutoCommit)
		d.rebootInto(1, d.newFW, ota.BootState{ActiveSlot: 1, RevertSlot: 0, IsCommitted: true})
		o, c, err := ota.WaitOutcome(ctx, ota.WaitOptions{Dial: d.dial(t), Before: before, Accepted: res.Confirmed})
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		if o.Result != ota.UpdatedCommitted || !o.CommitDeadline.IsZero() {
			t.Fatalf("outcome %+v", o)
		}
	})
}

// The new firmware crashes at boot: the device comes back on the old one.
func TestWaitOutcomeRolledBack(t *testing.T) {
	for _, accepted := range []bool{true, false} {
		bubble(t, func(t *testing.T, ctx context.Context) {
			d := newFakeDev(t)
			before, _ := pushed(t, ctx, d, 0)
			d.rebootInto(3, d.fw, ota.BootState{ActiveSlot: 0, RevertSlot: 0, IsCommitted: true, CommitTimeout: 300})
			o, c, err := ota.WaitOutcome(ctx, ota.WaitOptions{Dial: d.dial(t), Before: before, Accepted: accepted, Expect: d.newFW})
			if c == nil {
				t.Fatal("no client with the outcome")
			}
			c.Close()
			if !accepted {
				// Without the device's confirmation (nor a finalized update
				// seen) nothing says it installed anything: a reset during
				// the transfer looks just like this, and is not a rollback.
				if !errors.Is(err, ota.ErrUpdateFailed) || o == nil || o.Result != ota.NotApplied {
					t.Fatalf("accepted=%v: outcome %+v, err %v", accepted, o, err)
				}
				contains(t, err, "restarted before it had installed the update", "old firmware", "slot 0")
				return
			}
			if !errors.Is(err, ota.ErrUpdateFailed) || o == nil || o.Result != ota.RolledBack || o.Info.FWVersion != "1.0" {
				t.Fatalf("accepted=%v: outcome %+v, err %v", accepted, o, err)
			}
			contains(t, err, "old firmware", "slot 0")
		})
	}
}

// The device answers before it rebooted (update finished, reboot pending),
// then reboots.
func TestWaitOutcomePendingReboot(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		before, res := pushed(t, ctx, d, 0)
		dial := d.rebootOnDial(t, 3, 2, d.newFW, ota.BootState{ActiveSlot: 1, RevertSlot: 0, CommitTimeout: 300})
		ev := &events{}
		o, c, err := ota.WaitOutcome(ctx, ota.WaitOptions{Dial: dial, Before: before, Accepted: res.Confirmed, OnEvent: ev.fn})
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		if o.Result != ota.UpdatedUncommitted || ev.count(ota.EventNotRebooted) != 2 || ev.count(ota.EventWaiting) != 2 {
			t.Fatalf("outcome %+v, events %v", o, ev.kinds())
		}
	})
}

// The update failed on the device (reply lost, so not accepted): the
// device never goes away and OTA.Status says why.
func TestWaitOutcomeNotApplied(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		time.Sleep(time.Hour)
		before, err := ota.New(d.client(t)).Observe(ctx)
		if err != nil {
			t.Fatal(err)
		}
		d.mu.Lock()
		d.status = ota.Status{State: ota.StateError, Msg: "Wrong platform"}
		d.mu.Unlock()
		o, c, err := ota.WaitOutcome(ctx, ota.WaitOptions{Dial: d.dial(t), Before: before})
		c.Close()
		if !errors.Is(err, ota.ErrUpdateFailed) || o.Result != ota.NotApplied {
			t.Fatalf("outcome %+v, err %v", o, err)
		}
		contains(t, err, "Wrong platform")
	})
	// Idle, never reboots: NotApplied after RebootTimeout.
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		time.Sleep(time.Hour)
		before, _ := ota.New(d.client(t)).Observe(ctx)
		start := time.Now()
		o, c, err := ota.WaitOutcome(ctx, ota.WaitOptions{Dial: d.dial(t), Before: before, RebootTimeout: time.Minute})
		c.Close()
		if !errors.Is(err, ota.ErrUpdateFailed) || o.Result != ota.NotApplied || time.Since(start) < time.Minute {
			t.Fatalf("outcome %+v, err %v after %v", o, err, time.Since(start))
		}
		contains(t, err, "did not reboot")
	})
}

// Re-flashing the same version: recognised by the slot and the uptime.
func TestWaitOutcomeSameVersion(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		before, res := pushed(t, ctx, d, 0)
		d.rebootInto(0, d.fw, ota.BootState{ActiveSlot: 1, RevertSlot: 0, CommitTimeout: 300})
		o, c, err := ota.WaitOutcome(ctx, ota.WaitOptions{Dial: d.dial(t), Before: before, Accepted: res.Confirmed})
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		if o.Result != ota.UpdatedUncommitted {
			t.Fatalf("outcome %+v", o)
		}
	})
}

func TestWaitOutcomeTimeoutAndAuth(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		before, _ := pushed(t, ctx, d, 0)
		d.down = 1 << 30
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		o, c, err := ota.WaitOutcome(ctx, ota.WaitOptions{Dial: d.dial(t), Before: before})
		if o != nil || c != nil || !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ota.ErrUpdateFailed) {
			t.Fatalf("outcome %+v, err %v", o, err)
		}
		contains(t, err, "connection refused")
		// 250 ms doubling to 5 s: 0.25+0.5+1+2+4 = 7.75 s, then 5 s steps.
		if n := d.dials; n != 5+5 {
			t.Fatalf("%d dials in 30 s", n)
		}
	})
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		d.dialErr = fmt.Errorf("Sys.GetInfo: %w: check --rpc-creds", rpc.ErrAuth)
		o, c, err := ota.WaitOutcome(ctx, ota.WaitOptions{Dial: d.dial(t)})
		if err == nil || o != nil || c != nil || d.dials != 0 {
			t.Fatal("WaitOutcome without Before ran")
		}
		before := ota.Observation{At: time.Now()}
		_, _, err = ota.WaitOutcome(ctx, ota.WaitOptions{Dial: d.dial(t), Before: before})
		if !errors.Is(err, rpc.ErrAuth) || d.dials != 1 {
			t.Fatalf("err %v after %d dials", err, d.dials)
		}
	})
}

func TestCommitAfterHealthCheck(t *testing.T) {
	setup := func(t *testing.T, committed bool, health error) (*fakeDev, *ota.Device) {
		d := newFakeDev(t)
		d.boot = ota.BootState{ActiveSlot: 1, RevertSlot: 0, IsCommitted: committed, CommitTimeout: 300}
		d.srv.Handle("App.Health", func(context.Context, *rpc.Request) (any, error) {
			d.mu.Lock()
			d.calls["App.Health"]++
			d.mu.Unlock()
			return nil, health
		})
		d.srv.Handle("OTA.Commit", func(context.Context, *rpc.Request) (any, error) {
			d.mu.Lock()
			defer d.mu.Unlock()
			d.calls["OTA.Commit"]++
			if d.boot.IsCommitted {
				return nil, &rpc.Error{Code: -1}
			}
			d.boot.IsCommitted = true
			return nil, nil
		})
		return d, ota.New(d.client(t))
	}
	bubble(t, func(t *testing.T, ctx context.Context) {
		d, dev := setup(t, false, rpc.Errorf(-1, "sensor missing"))
		_, err := dev.CommitAfterHealthCheck(ctx, ota.HealthOptions{Method: "App.Health"})
		var re *rpc.Error
		if !errors.Is(err, ota.ErrHealthCheck) || !errors.Is(err, ota.ErrUpdateFailed) || !errors.As(err, &re) || d.count("OTA.Commit") != 0 {
			t.Fatalf("err %v, commits %d", err, d.count("OTA.Commit"))
		}
		contains(t, err, "sensor missing", "not committing", "slot 0")
	})
	bubble(t, func(t *testing.T, ctx context.Context) {
		d, dev := setup(t, true, nil)
		_, err := dev.CommitAfterHealthCheck(ctx, ota.HealthOptions{Method: "App.Health"})
		if !errors.Is(err, ota.ErrNothingToCommit) || !errors.Is(err, ota.ErrAlreadyCommitted) || d.count("App.Health") != 0 || d.count("OTA.Commit") != 0 {
			t.Fatalf("err %v", err)
		}
	})
	bubble(t, func(t *testing.T, ctx context.Context) {
		// Committed by someone else between the read and OTA.Commit:
		// nothing left to commit.
		d, dev := setup(t, false, nil)
		d.srv.Handle("OTA.Commit", func(context.Context, *rpc.Request) (any, error) {
			d.mu.Lock()
			defer d.mu.Unlock()
			d.boot.IsCommitted = true
			return nil, &rpc.Error{Code: -1}
		})
		bs, err := dev.CommitAfterHealthCheck(ctx, ota.HealthOptions{})
		if !errors.Is(err, ota.ErrNothingToCommit) || !bs.IsCommitted || bs.ActiveSlot != 1 {
			t.Fatalf("%+v %v", bs, err)
		}
	})
	bubble(t, func(t *testing.T, ctx context.Context) {
		// Fell back between the read and OTA.Commit: not "nothing to
		// commit" — the firmware on trial is gone.
		d, dev := setup(t, false, nil)
		d.srv.Handle("OTA.Commit", func(context.Context, *rpc.Request) (any, error) {
			d.mu.Lock()
			defer d.mu.Unlock()
			d.boot = ota.BootState{ActiveSlot: 0, RevertSlot: 0, IsCommitted: true}
			return nil, &rpc.Error{Code: -1}
		})
		bs, err := dev.CommitAfterHealthCheck(ctx, ota.HealthOptions{})
		if errors.Is(err, ota.ErrNothingToCommit) || !errors.Is(err, ota.ErrAlreadyCommitted) || bs.ActiveSlot != 0 {
			t.Fatalf("%+v %v", bs, err)
		}
		contains(t, err, "boots slot 0 next", "fell back or was reverted before the commit")
	})
	bubble(t, func(t *testing.T, ctx context.Context) {
		d, dev := setup(t, false, nil)
		bs, err := dev.CommitAfterHealthCheck(ctx, ota.HealthOptions{}) // no health check
		if err != nil || !bs.IsCommitted || d.count("App.Health") != 0 {
			t.Fatalf("%+v %v", bs, err)
		}
	})
	bubble(t, func(t *testing.T, ctx context.Context) {
		// Commit answers but the device does not show it committed.
		d, dev := setup(t, false, nil)
		d.srv.Handle("OTA.Commit", func(context.Context, *rpc.Request) (any, error) { return nil, nil })
		_, err := dev.CommitAfterHealthCheck(ctx, ota.HealthOptions{Method: "App.Health"})
		contains(t, err, "committed=false")
	})
}

// freshPush is pushed without the hour of uptime: whole-second uptimes of
// a device that just booted cannot tell a reboot.
func freshPush(t *testing.T, ctx context.Context, d *fakeDev) (ota.Observation, ota.PushResult) {
	t.Helper()
	c := d.client(t)
	dev := ota.New(c)
	before, err := dev.Observe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	res, err := dev.Push(ctx, bytes.NewReader(payload(100)), 100, ota.PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	return before, res
}

// A fast rollback that neither the uptime nor a failed dial shows: once
// the device accepted the update, the old slot active again means it rolled
// back; without acceptance it only times out.
func TestWaitOutcomeRollbackSeenThroughAcceptance(t *testing.T) {
	for _, accepted := range []bool{true, false} {
		bubble(t, func(t *testing.T, ctx context.Context) {
			d := newFakeDev(t)
			before, _ := freshPush(t, ctx, d)
			d.rebootInto(0, d.fw, ota.BootState{ActiveSlot: 0, IsCommitted: true})
			o, c, err := ota.WaitOutcome(ctx, ota.WaitOptions{Dial: d.dial(t), Before: before, Accepted: accepted, RebootTimeout: time.Minute})
			c.Close()
			want := ota.RolledBack
			if !accepted {
				want = ota.NotApplied
			}
			if o == nil || o.Result != want || !errors.Is(err, ota.ErrUpdateFailed) {
				t.Fatalf("accepted=%v: outcome %+v, %v", accepted, o, err)
			}
		})
	}
}

// A transient failure while the update waits for its reboot (OTA.Status
// state 3) is not taken for the reboot.
func TestWaitOutcomeTransientFailureBeforeReboot(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		before, res := freshPush(t, ctx, d)
		d.down = 1 // a glitch, no reboot
		dial := d.rebootOnDial(t, 3, 1, d.newFW, ota.BootState{ActiveSlot: 1, RevertSlot: 0, CommitTimeout: 300})
		ev := &events{}
		o, c, err := ota.WaitOutcome(ctx, ota.WaitOptions{Dial: dial, Before: before, Accepted: res.Confirmed, OnEvent: ev.fn})
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		if o.Result != ota.UpdatedUncommitted || o.Info.FWVersion != "1.1" || ev.count(ota.EventNotRebooted) != 1 || o.Attempts != 4 {
			t.Fatalf("outcome %+v, events %v", o, ev.kinds())
		}
	})
}

// commitRecorder makes OTA.Commit record which firmware instance got it.
func (d *fakeDev) commitRecorder() *[]ota.Firmware {
	var got []ota.Firmware
	d.srv.Handle("OTA.Commit", func(context.Context, *rpc.Request) (any, error) {
		d.mu.Lock()
		defer d.mu.Unlock()
		got = append(got, d.fw)
		if d.boot.IsCommitted {
			return nil, &rpc.Error{Code: -1}
		}
		d.boot.IsCommitted = true
		return nil, nil
	})
	return &got
}

// inWindow makes the device, which finalized an update, answer normally
// for `window` — the old instance still up (same firmware, same uptime),
// the new boot state already written, OTA.Status idle, no 418 — then
// reboot into fw without the link ever going away (a serial port, an MQTT
// broker).
func (d *fakeDev) inWindow(window time.Duration, fw ota.Firmware) {
	d.mu.Lock()
	d.status = ota.Status{State: ota.StateIdle}
	d.mu.Unlock()
	done := make(chan struct{})
	d.t.Cleanup(func() { <-done })
	go func() {
		defer close(done)
		time.Sleep(window)
		d.mu.Lock()
		d.fw, d.bootedAt = fw, time.Now()
		d.status = ota.Status{State: ota.StateIdle}
		d.mu.Unlock()
	}()
}

// A device that still answers in the moments between its last reply and
// its reboot is not rebooted: the outcome waits for evidence of the reboot
// (here the uptime), so the commit that follows reaches the new firmware,
// not the old instance that is about to go away.
func TestWaitOutcomeWaitsOutThePreRebootWindow(t *testing.T) {
	for _, fw := range []string{"new firmware", "same firmware"} {
		bubble(t, func(t *testing.T, ctx context.Context) {
			d := newFakeDev(t)
			before, res := pushed(t, ctx, d, 0)
			next := d.newFW
			if fw == "same firmware" {
				next = d.fw
			}
			commits := d.commitRecorder()
			start := time.Now()
			d.inWindow(3*time.Second, next)
			o, c, err := ota.WaitOutcome(ctx, ota.WaitOptions{Dial: d.dial(t), Before: before, Accepted: res.Confirmed})
			if err != nil {
				t.Fatalf("%s: %v (outcome %+v)", fw, err, o)
			}
			defer c.Close()
			if o.Result != ota.UpdatedUncommitted || o.Info.Firmware() != next || time.Since(start) < 3*time.Second {
				t.Fatalf("%s: decided after %v: %+v", fw, time.Since(start), o)
			}
			if _, err := ota.New(c).CommitAfterHealthCheck(ctx, ota.HealthOptions{}); err != nil {
				t.Fatal(err)
			}
			if len(*commits) != 1 || (*commits)[0] != next {
				t.Fatalf("%s: OTA.Commit reached %v", fw, *commits)
			}
		})
	}
}

// The same window on a device that had booted moments before the update:
// whole-second uptimes tell the two boots apart only once they are more
// than the slack apart, and nothing else may stand in for that evidence.
func TestWaitOutcomeFreshlyBootedDevice(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		time.Sleep(500 * time.Millisecond)
		c := d.client(t)
		dev := ota.New(c)
		before, err := dev.Observe(ctx)
		if err != nil {
			t.Fatal(err)
		}
		data := payload(2000)
		res, err := dev.Push(ctx, bytes.NewReader(data), int64(len(data)), ota.PushOptions{})
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		start := time.Now()
		d.inWindow(3*time.Second, d.fw)
		o, c2, err := ota.WaitOutcome(ctx, ota.WaitOptions{Dial: d.dial(t), Before: before, Accepted: res.Confirmed})
		if err != nil {
			t.Fatalf("%v (outcome %+v)", err, o)
		}
		c2.Close()
		if o.Result != ota.UpdatedUncommitted || o.After.ActiveSlot != 1 || time.Since(start) < 3*time.Second {
			t.Fatalf("outcome %+v after %v", o, time.Since(start))
		}
	})
}

// A device answering 418 "shutting down" is rebooting, not back: the next
// normal answer comes from the new boot, even from a device that reports
// no uptime and a link that never looks away.
func TestWaitOutcomeShuttingDownIsNotBack(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		before, res := pushed(t, ctx, d, 0)
		d.srv.Handle("Sys.GetInfo", func(context.Context, *rpc.Request) (any, error) {
			d.mu.Lock()
			defer d.mu.Unlock()
			if d.fw != d.newFW {
				return nil, rpc.Errorf(418, "Shutting down in 100 ms")
			}
			return map[string]any{"id": "esp32_0A1B2C", "arch": "esp32", "fw_version": d.fw.Version, "fw_id": d.fw.BuildID}, nil
		})
		commits := d.commitRecorder()
		d.inWindow(time.Second, d.newFW)
		ev := &events{}
		o, c, err := ota.WaitOutcome(ctx, ota.WaitOptions{Dial: d.dial(t), Before: before, Accepted: res.Confirmed, OnEvent: ev.fn})
		if err != nil {
			t.Fatalf("%v (outcome %+v)", err, o)
		}
		defer c.Close()
		if o.Result != ota.UpdatedUncommitted || o.Info.FWVersion != "1.1" || ev.count(ota.EventWaiting) == 0 {
			t.Fatalf("outcome %+v, events %v", o, ev.kinds())
		}
		if _, err := ota.New(c).CommitAfterHealthCheck(ctx, ota.HealthOptions{}); err != nil || len(*commits) != 1 || (*commits)[0] != d.newFW {
			t.Fatalf("commit %v reached %v", err, *commits)
		}
	})
}

// OTA.Revert (like OTA.SetBootState) points the boot state at another slot
// before any reboot, with OTA.Status idle: without an accepted update that
// is no evidence of a reboot, so the wait goes on until the reboot timeout.
func TestWaitOutcomeNewSlotWithoutUpdateIsNoReboot(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		time.Sleep(500 * time.Millisecond) // booted moments ago: no uptime evidence
		d.boot = ota.BootState{ActiveSlot: 1, RevertSlot: 0, IsCommitted: false, CommitTimeout: 300}
		before, err := ota.New(d.client(t)).Observe(ctx)
		if err != nil {
			t.Fatal(err)
		}
		d.mu.Lock()
		d.boot = ota.BootState{ActiveSlot: 0, RevertSlot: 0, IsCommitted: true} // revert replied, reboot to come
		d.mu.Unlock()
		o, c, _ := ota.WaitOutcome(ctx, ota.WaitOptions{Dial: d.dial(t), Before: before, RebootTimeout: time.Minute})
		if c != nil {
			c.Close()
		}
		if o == nil || o.Result != ota.NotApplied {
			t.Fatalf("outcome %+v: a staged slot was taken for a reboot", o)
		}
	})
}

// CheckHealth retries for the grace period: a method that passes late is
// healthy; one that never passes fails after the grace, with the last
// error and the number of tries.
func TestCheckHealthGrace(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		n := 0
		never := false
		var mu sync.Mutex
		d.srv.Handle("App.Health", func(ctx context.Context, _ *rpc.Request) (any, error) {
			mu.Lock()
			n++
			n, never := n, never
			mu.Unlock()
			switch {
			case never:
				return nil, rpc.Errorf(-1, "warming up")
			case n == 1:
				time.Sleep(10 * time.Second) // answers too late: counts as a failure
				return nil, nil
			case n < 4:
				return nil, rpc.Errorf(-1, "warming up")
			}
			return nil, nil
		})
		dev := ota.New(d.client(t))
		start := time.Now()
		tries, err := dev.CheckHealth(ctx, ota.HealthOptions{Method: "App.Health", Grace: time.Minute})
		if err != nil || tries != 4 || time.Since(start) != 5*time.Second+3*time.Second {
			t.Fatalf("%d tries, %v after %v", tries, err, time.Since(start))
		}
		mu.Lock()
		never = true
		mu.Unlock()
		start = time.Now()
		tries, err = dev.CheckHealth(ctx, ota.HealthOptions{Method: "App.Health", Grace: 10 * time.Second, Interval: 3 * time.Second})
		var he *ota.HealthError
		if !errors.As(err, &he) || !errors.Is(err, ota.ErrHealthCheck) || !errors.Is(err, ota.ErrUpdateFailed) ||
			ota.ReasonOf(err) != ota.ReasonHealthFailed || tries != 5 || time.Since(start) != 10*time.Second {
			t.Fatalf("%d tries, %v after %v", tries, err, time.Since(start))
		}
		contains(t, err, "App.Health did not answer without error within 10s (5 tries; last: ", "warming up")
	})
}

// A link that connects at once while the device is still away (a broker
// session, a serial port) loses the request sent meanwhile: the first call
// of an attempt is sent again after Resend, so the device is seen as soon
// as it answers, not AttemptTimeout later.
func TestWaitOutcomeResendsALostProbe(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		before, res := pushed(t, ctx, d, 0)
		d.rebootInto(0, d.newFW, ota.BootState{ActiveSlot: 1, RevertSlot: 0, IsCommitted: false, CommitTimeout: 300})
		d.mu.Lock()
		d.loseGetInfo = 2
		d.mu.Unlock()
		start := time.Now()
		o, c, err := ota.WaitOutcome(ctx, ota.WaitOptions{Dial: d.dial(t), Before: before, Accepted: res.Confirmed, Expect: d.newFW})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if o.Result != ota.UpdatedUncommitted || o.Attempts != 1 {
			t.Fatalf("outcome %+v", o)
		}
		// Two copies lost, the third answered: 2 × Resend (1 s).
		if el := time.Since(start); el != 2*time.Second {
			t.Fatalf("waited %v, want 2s", el)
		}
	})
}
