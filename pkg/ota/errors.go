package ota

import (
	"context"
	"errors"
	"fmt"
)

// ErrUpdateFailed is wrapped by every error meaning that the update did not
// take: the device refused it (busy, uncommitted, wrong platform), aborted
// it (bad bundle, digest mismatch), or came back on its old firmware. The
// CLI maps it to exit code 6. The device's own *rpc.Error, when there is
// one, is wrapped too, so check ErrUpdateFailed first.
var ErrUpdateFailed = errors.New("the update did not take")

// ErrBusy is wrapped (with ErrUpdateFailed) when OTA.Status shows an update
// already running or one that finished and waits for its reboot.
var ErrBusy = errors.New("the device is busy with another update")

// ErrHealthCheck is wrapped (with ErrUpdateFailed) by
// CommitAfterHealthCheck when the health-check method failed, so the
// firmware was not committed.
var ErrHealthCheck = errors.New("health check failed")

// rejected wraps a device refusal as an update failure, with a hint about
// the usual cause when the running firmware is on trial.
func (d *Device) rejected(ctx context.Context, what string, err error) error {
	hint := ""
	if !isDeviceError(err) {
		return fmt.Errorf("%s: %w", what, err)
	}
	if ctx.Err() == nil {
		if bs, berr := d.GetBootState(ctx); berr == nil && !bs.IsCommitted {
			hint = fmt.Sprintf(" (the running firmware in slot %d is not committed yet: run `otactl commit` or `otactl revert` first)", bs.ActiveSlot)
			return fmt.Errorf("%w: %w: %s: %w%s", ErrUpdateFailed, ErrUncommitted, what, err, hint)
		}
	}
	return fmt.Errorf("%w: %s: %w%s", ErrUpdateFailed, what, err, hint)
}

// PushError is returned by Push when the transfer failed after OTA.Begin.
// The device's boot state is untouched in every case: only a complete,
// verified bundle changes it, at OTA.End.
type PushError struct {
	// Offset is where the failing chunk starts.
	Offset int64
	// Err is the last error of that chunk (or the context's error).
	Err error
	// Aborted is true when OTA.End was sent to abort and the device
	// answered; false when it did not answer, in which case its update
	// watchdog aborts the update after the push timeout.
	Aborted bool
	// Rejected is true when the device refused the data (an *rpc.Error),
	// as opposed to the link failing or timing out.
	Rejected bool
}

func (e *PushError) Error() string {
	var what string
	if e.Rejected {
		what = fmt.Sprintf("the device rejected the data at offset %d: %v", e.Offset, e.Err)
	} else {
		what = fmt.Sprintf("writing at offset %d failed: %v", e.Offset, e.Err)
	}
	if e.Aborted {
		return what + "; the update was aborted and the boot state is unchanged"
	}
	return what + "; the device did not confirm the abort, its update watchdog will end the update; the boot state is unchanged"
}

// Unwrap returns the cause, plus ErrUpdateFailed when the device rejected
// the data.
func (e *PushError) Unwrap() []error {
	if e.Rejected {
		return []error{ErrUpdateFailed, e.Err}
	}
	return []error{e.Err}
}
