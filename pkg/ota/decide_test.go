package ota

import (
	"testing"
	"time"
)

// The verdict as a function of what was seen: a reset before the device
// confirmed or finalized the update is NotApplied; a return to the old
// firmware after it had finalized is RolledBack; an answer from the old
// instance (its pre-reboot window) decides nothing.
func TestDecideTable(t *testing.T) {
	t0 := time.Date(2024, 1, 1, 12, 0, 0, 0, time.UTC)
	oldFW, newFW := Firmware{Version: "1.0", BuildID: "b1"}, Firmware{Version: "2.0", BuildID: "b2"}
	info := func(fw Firmware, up float64) SysInfo {
		return SysInfo{FWVersion: fw.Version, FWID: fw.BuildID, Uptime: up}
	}
	before := Observation{Info: info(oldFW, 3600), Boot: BootState{ActiveSlot: 0, RevertSlot: 0, IsCommitted: true}, At: t0}
	oldBoot := before.Boot
	pending := BootState{ActiveSlot: 1, RevertSlot: 0, CommitTimeout: 300}
	st := func(s State, msg string) Status { return Status{State: s, Msg: msg} }
	now := time.Now() // probes are recent, so RebootTimeout has not passed
	const (
		sameInstance = 3600 + 30 // uptime of the old instance 30 s later
		newBoot      = 5         // uptime of a fresh boot
	)
	for _, tc := range []struct {
		name      string
		accepted  bool // device replied success
		finalized bool // a probe saw it finalized before
		wentAway  bool
		fw        Firmware
		up        float64
		boot      BootState
		status    *Status
		want      Result // "" = keep waiting
	}{
		// Defect: reset during the download, reply lost, device back on
		// the old slot with the old firmware and idle.
		{name: "reset during download", wentAway: true, fw: oldFW, up: newBoot, boot: oldBoot, status: &Status{}, want: NotApplied},
		{name: "reset during download, no status", wentAway: true, fw: oldFW, up: newBoot, boot: oldBoot, want: NotApplied},
		{name: "reset seen by uptime only", fw: oldFW, up: newBoot, boot: oldBoot, status: &Status{}, want: NotApplied},
		{name: "reset, update failed on device", fw: oldFW, up: sameInstance, boot: oldBoot, status: new(st(StateError, "Update failed")), want: NotApplied},
		// Real rollbacks: the device had finalized.
		{name: "crash on boot after confirmed update", accepted: true, wentAway: true, fw: oldFW, up: newBoot, boot: oldBoot, status: &Status{}, want: RolledBack},
		{name: "crash on boot, reply lost but finalized seen", finalized: true, wentAway: true, fw: oldFW, up: newBoot, boot: oldBoot, status: &Status{}, want: RolledBack},
		{name: "fast rollback, no reboot seen", accepted: true, fw: oldFW, up: sameInstance, boot: oldBoot, status: &Status{}, want: RolledBack},
		// The pre-reboot window: the old instance answers, new boot state written.
		{name: "window, status idle", accepted: true, fw: oldFW, up: sameInstance, boot: pending, status: &Status{}},
		{name: "window, status success", accepted: true, fw: oldFW, up: sameInstance, boot: pending, status: new(st(StateSuccess, ""))},
		{name: "window, no status", accepted: true, fw: oldFW, up: sameInstance, boot: pending},
		{name: "window after a link glitch", accepted: true, wentAway: true, fw: oldFW, up: sameInstance, boot: pending, status: &Status{}},
		// After the reboot.
		{name: "new firmware", accepted: true, wentAway: true, fw: newFW, up: newBoot, boot: pending, status: &Status{}, want: UpdatedUncommitted},
		{name: "new firmware, reply lost", fw: newFW, up: newBoot, boot: pending, status: &Status{}, want: UpdatedUncommitted},
		{name: "same firmware re-flashed", accepted: true, fw: oldFW, up: newBoot, boot: pending, status: &Status{}, want: UpdatedUncommitted},
		{name: "committed at boot", accepted: true, fw: newFW, up: newBoot, boot: BootState{ActiveSlot: 1, IsCommitted: true}, want: UpdatedCommitted},
		// Still downloading: not rebooted, not failed.
		{name: "downloading", fw: oldFW, up: sameInstance, boot: oldBoot, status: new(st(StateProgress, ""))},
		{name: "old instance, idle, nothing seen", fw: oldFW, up: sameInstance, boot: oldBoot, status: &Status{}},
	} {
		p := probe{info: info(tc.fw, tc.up), boot: tc.boot, at: t0.Add(30 * time.Second)}
		if tc.status != nil {
			p.status, p.statusOK = *tc.status, true
		}
		ev := evidence{quietSince: now, finalized: tc.accepted || tc.finalized}
		if tc.wentAway {
			ev.wentAway = t0.Add(20 * time.Second)
		}
		opts := WaitOptions{Before: before, Accepted: tc.accepted, RebootTimeout: time.Minute}
		o := decide(opts, p, ev)
		var got Result
		if o != nil {
			got = o.Result
		}
		if got != tc.want {
			reason := ""
			if o != nil {
				reason = o.Message
			}
			t.Errorf("%s: %q (%s), want %q", tc.name, got, reason, tc.want)
		}
	}
}
