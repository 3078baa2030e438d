package ota

import (
	"context"
	"errors"
	"fmt"
)

// CommitAfterHealthCheck makes a firmware on trial permanent, carefully:
//
//  1. OTA.GetBootState must show an uncommitted firmware, else the error
//     wraps ErrAlreadyCommitted (nothing to commit — e.g. the device
//     already rolled back, or committed itself with commit timeout 0);
//  2. if healthMethod is not empty, it is called without arguments and must
//     answer without error, else nothing is committed and the error wraps
//     ErrHealthCheck and ErrUpdateFailed (the device then rolls back by
//     itself when its commit timeout expires; call Revert to do it now);
//  3. OTA.Commit;
//  4. OTA.GetBootState must now show the same slot, committed.
//
// It returns the boot state read last (also when OTA.Commit was refused as
// already committed: then the state read after that refusal).
func (d *Device) CommitAfterHealthCheck(ctx context.Context, healthMethod string, onEvent func(Event)) (BootState, error) {
	bs, err := d.GetBootState(ctx)
	if err != nil {
		return bs, fmt.Errorf("reading the boot state before committing: %w", err)
	}
	if bs.IsCommitted {
		return bs, fmt.Errorf("%w: slot %d is active and committed, nothing to commit", ErrAlreadyCommitted, bs.ActiveSlot)
	}
	if healthMethod != "" {
		emit(onEvent, Event{Kind: EventHealthCheck, Boot: &bs, Msg: "health check: calling " + healthMethod})
		if _, err := d.c.Call(ctx, healthMethod, nil); err != nil {
			// err names the method already (rpc errors start with it).
			return bs, fmt.Errorf("%w: %w: %w; not committing: slot %d falls back to slot %d when its commit timeout expires (or run `otactl revert`)",
				ErrUpdateFailed, ErrHealthCheck, err, bs.ActiveSlot, bs.RevertSlot)
		}
	}
	if err := d.Commit(ctx); err != nil {
		slot := bs.ActiveSlot
		if errors.Is(err, ErrAlreadyCommitted) {
			// It fell back (commit timeout) or committed itself since the
			// first read: return what it shows now.
			if now, berr := d.GetBootState(ctx); berr == nil {
				bs = now
			}
		}
		return bs, fmt.Errorf("committing slot %d: %w", slot, err)
	}
	after, err := d.GetBootState(ctx)
	if err != nil {
		return bs, fmt.Errorf("OTA.Commit succeeded but reading the boot state to confirm it failed: %w", err)
	}
	if !after.IsCommitted || after.ActiveSlot != bs.ActiveSlot {
		return after, fmt.Errorf("OTA.Commit succeeded but the device reports slot %d active, committed=%t (expected slot %d committed): check with `otactl bootstate`",
			after.ActiveSlot, after.IsCommitted, bs.ActiveSlot)
	}
	emit(onEvent, Event{Kind: EventCommitted, Boot: &after, Msg: fmt.Sprintf("slot %d is committed", after.ActiveSlot)})
	return after, nil
}
