package ota

import (
	"context"
	"errors"
	"fmt"

	"github.com/otactl/otactl/pkg/ota/wire"
)

// CommitAfterHealthCheck makes a firmware on trial permanent, carefully:
//
//  1. OTA.GetBootState must show an uncommitted firmware, else the error
//     wraps ErrAlreadyCommitted (nothing to commit — e.g. the device
//     already rolled back, or committed itself with commit timeout 0);
//  2. if h.Method is set, it must answer without error within the grace
//     period (CheckHealth), else nothing is committed and the error is a
//     *HealthError wrapping ErrHealthCheck and ErrUpdateFailed (the device
//     then rolls back by itself when its commit timeout expires; call
//     RevertAndWait to do it now);
//  3. OTA.Commit;
//  4. OTA.GetBootState must now show the same slot, committed.
//
// With h.Device set, Sys.GetInfo is checked against it first and again
// right before OTA.Commit: when another device answers, nothing is
// committed and the error wraps a *DeviceChangedError.
//
// It returns the boot state read last (also when OTA.Commit was refused as
// already committed: then the state read after that refusal).
func (d *Device) CommitAfterHealthCheck(ctx context.Context, h HealthOptions) (BootState, error) {
	return d.commitAfterHealthCheck(ctx, h, nil)
}

// commitAfterHealthCheck is CommitAfterHealthCheck; seen, when set, is the
// boot state the caller has just read on this link, after checking the
// Sys.GetInfo of the same boot against h.Device (WaitOutcome's probe), with
// no call in between: step 1 and the first identity check take it rather
// than reading both again. The check after a health check, and the read
// after OTA.Commit, stay.
func (d *Device) commitAfterHealthCheck(ctx context.Context, h HealthOptions, seen *BootState) (BootState, error) {
	var bs BootState
	if seen != nil {
		bs = *seen
	} else {
		if err := h.Device.check(ctx, d); err != nil {
			return BootState{}, fmt.Errorf("checking which device answers before committing: %w", err)
		}
		var err error
		if bs, err = d.GetBootState(ctx); err != nil {
			return bs, fmt.Errorf("reading the boot state before committing: %w", err)
		}
	}
	if bs.IsCommitted {
		return bs, fmt.Errorf("%w: slot %d is active and committed, nothing to commit", ErrNothingToCommit, bs.ActiveSlot)
	}
	if h.Method != "" {
		if _, err := d.CheckHealth(ctx, h); err != nil {
			var he *HealthError
			if !errors.As(err, &he) {
				return bs, fmt.Errorf("health check: %w", err)
			}
			return bs, fmt.Errorf("%w; not committing: slot %d falls back to slot %d when its commit timeout expires (or run `otactl revert`)",
				err, bs.ActiveSlot, bs.RevertSlot)
		}
	}
	if h.Method != "" {
		// The health check may have taken its whole grace period: check
		// again that the device is the same.
		if err := h.Device.check(ctx, d); err != nil {
			return bs, fmt.Errorf("checking which device answers before committing: %w", err)
		}
	}
	if err := d.Commit(ctx); err != nil {
		slot := bs.ActiveSlot
		if errors.Is(err, ErrAlreadyCommitted) {
			// It fell back (commit timeout) or committed itself since the
			// first read: return what it shows now.
			if now, berr := d.GetBootState(ctx); berr == nil {
				bs = now
				switch {
				case now.IsCommitted && now.ActiveSlot == slot:
					// Committed by someone else since the first read.
					return bs, fmt.Errorf("%w: slot %d was committed meanwhile, nothing to commit", ErrNothingToCommit, slot)
				case now.ActiveSlot != slot:
					return bs, fmt.Errorf("committing slot %d: %w; the device boots slot %d next (committed=%t): slot %d fell back or was reverted before the commit, so it was not committed",
						slot, err, now.ActiveSlot, now.IsCommitted, slot)
				}
			}
		}
		return bs, fmt.Errorf("committing slot %d: %w", slot, err)
	}
	after, err := d.GetBootState(ctx)
	if err != nil {
		return bs, fmt.Errorf("%s succeeded but reading the boot state to confirm it failed: %w", wire.OTACommit, err)
	}
	if !after.IsCommitted || after.ActiveSlot != bs.ActiveSlot {
		return after, fmt.Errorf("%s succeeded but the device reports slot %d active, committed=%t (expected slot %d committed): check with `otactl bootstate`",
			wire.OTACommit, after.ActiveSlot, after.IsCommitted, bs.ActiveSlot)
	}
	emit(h.OnEvent, Event{Kind: EventCommitted, Boot: &after, Msg: fmt.Sprintf("slot %d is committed", after.ActiveSlot)})
	return after, nil
}
