package ota

import "time"

// BootView says, from OTA.GetBootState and Sys.GetInfo read together, what
// runs now and what boots next: two different things, since active_slot is
// the slot booted next, which OTA.SetBootState, OTA.Revert or an expiring
// commit timer change without a reboot.
type BootView struct {
	// Running is the firmware that runs now (Sys.GetInfo); zero when the
	// device did not answer it.
	Running Firmware
	App     string
	// RunningSlot is the slot the running firmware booted from, when
	// known: reported by the device (RunningSlotField), else nil.
	RunningSlot *int
	// Next is the slot the next boot starts; NextCommitted whether that
	// boot is committed (else it is a trial that falls back to Fallback).
	Next          int
	NextCommitted bool
	Fallback      int
	// NextIsRunning is true when the next boot starts the running slot
	// (always assumed when the running slot is not reported).
	NextIsRunning bool
	// OnTrial is true when the running firmware is uncommitted: committing
	// keeps it, and any reboot before that boots Fallback.
	OnTrial bool
	// FallbackIn is the time left before the commit timer makes the device
	// fall back (trial only, when the timer can be running: commit timeout
	// above 0 and not yet passed since boot); nil otherwise.
	FallbackIn *time.Duration
}

// ViewBoot interprets a boot state and, if known, Sys.GetInfo (nil when
// the device did not answer it).
func ViewBoot(bs BootState, info *SysInfo) BootView {
	v := BootView{Next: bs.ActiveSlot, NextCommitted: bs.IsCommitted, Fallback: bs.RevertSlot, NextIsRunning: true}
	if info != nil {
		v.Running, v.App = info.Firmware(), info.App
		if info.RunningSlot != nil {
			s := *info.RunningSlot
			v.RunningSlot = &s
			v.NextIsRunning = s == bs.ActiveSlot
		}
	}
	v.OnTrial = v.NextIsRunning && !bs.IsCommitted
	if v.OnTrial && info != nil && bs.CommitTimeout > 0 {
		left := time.Duration(bs.CommitTimeout)*time.Second - secondsDur(info.Uptime)
		if left > 0 {
			v.FallbackIn = &left
		}
	}
	return v
}
