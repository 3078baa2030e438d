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

// ErrLinkLost is wrapped by Push's error when the link was lost and did
// not come back within PushOptions.ReconnectTimeout (the error is a
// *PushError; the device's watchdog ends the update it was receiving).
var ErrLinkLost = errors.New("the link to the device did not come back")

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
	// Unreached is true when the link was gone, so no OTA.End could be
	// sent to abort the update.
	Unreached bool
}

func (e *PushError) Error() string {
	var what string
	if e.Rejected {
		what = fmt.Sprintf("the device rejected the data at offset %d: %v", e.Offset, e.Err)
	} else {
		what = fmt.Sprintf("writing at offset %d failed: %v", e.Offset, e.Err)
	}
	switch {
	case e.Aborted:
		return what + "; the update was aborted and the boot state is unchanged"
	case e.Unreached:
		return what + "; otactl could not reach the device to abort the update: its update watchdog will end it; the boot state is unchanged"
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

// UpdateLostError is returned by Push when the device no longer runs the
// push's update after the push was cut off (link lost, writes refused): it
// was reset, or its update ended or was replaced. Nothing was applied: the
// device changes its boot state only at the end of a complete bundle, so
// it runs its old firmware and its boot state is unchanged. It wraps
// ErrUpdateFailed; a new push starts over.
type UpdateLostError struct {
	// Offset is how many bytes the device had confirmed, Size the bundle's.
	Offset, Size int64
	// Rebooted: the device's uptime says it booted after the push began.
	Rebooted bool
	// Other: the device runs an update that is not this push's (it
	// expects an offset this push never reached, or fell behind what it
	// had confirmed).
	Other bool
	// Status is OTA.Status as read once the link was back (zero if not
	// read).
	Status Status
	// Err is what cut the push off (a link error, the device's refusal).
	Err error
}

func (e *UpdateLostError) Error() string {
	at := fmt.Sprintf("after %d of %d bytes", e.Offset, e.Size)
	var what string
	switch {
	case e.Rebooted && e.Status.State == StateProgress:
		what = fmt.Sprintf("the device was reset during the push (%s) and now runs another update", at)
	case e.Rebooted:
		what = fmt.Sprintf("the device was reset during the push (%s): the update was lost", at)
	case e.Other:
		what = fmt.Sprintf("the device runs another update than this push's (%s): %v", at, e.Err)
	case e.Status.State == StateIdle:
		what = fmt.Sprintf("the device no longer runs the update (%s; OTA.Status: idle): it was reset, or the update was ended", at)
	default:
		msg := e.Status.Msg
		if msg == "" {
			msg = e.Status.State.String()
		}
		what = fmt.Sprintf("the device ended the update (%s; OTA.Status: %s)", at, msg)
	}
	if e.Err != nil && !e.Other {
		what += fmt.Sprintf(" [the push was cut off by: %v]", e.Err)
	}
	return what + "; nothing was applied, the device runs its old firmware and its boot state is unchanged: push again"
}

// Unwrap returns ErrUpdateFailed: the update did not take.
func (e *UpdateLostError) Unwrap() error { return ErrUpdateFailed }

// Reason is the update's reason code (ReasonOf reads it): ReasonDeviceReset
// when the device was reset (its uptime says so, or OTA.Status fell back to
// idle, which a device shows after a boot); ReasonBusy when it runs another
// update than this push's; else the reason its OTA.Status message gives
// (ReasonUpdateTimeout when its watchdog ended the update).
func (e *UpdateLostError) Reason() string {
	switch {
	case e.Rebooted && e.Status.State == StateProgress, e.Other, e.Status.State == StateSuccess:
		return string(ReasonBusy)
	case e.Rebooted, e.Status.State == StateIdle:
		return string(ReasonDeviceReset)
	}
	return string(DeviceMessageReason(e.Status.Msg))
}
