// Package ota is the typed API of the Mongoose OS OTA service (the OTA.*
// RPC methods, plus Sys.GetInfo and Sys.Reboot) over an RPC client, and the
// workflows built on it: pushing a bundle over any link (OTA.Begin/Write/End),
// waiting for the device to reboot and telling what it booted, and committing
// after a health check.
//
// Nothing here prints: progress and sentences go to callbacks (func(Event),
// func(sent, total int64)) so the CLI decides how to show them.
//
// # Errors
//
// Errors returned by a device stay *rpc.Error (use errors.As). Errors that
// mean "the update did not take" — the device refused or aborted it, or came
// back on its old firmware — also wrap ErrUpdateFailed; check for it before
// *rpc.Error when mapping exit codes. Link failures and timeouts are not
// ErrUpdateFailed: they wrap the transport's error or context.DeadlineExceeded.
package ota

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/otactl/otactl/pkg/ota/wire"
	"github.com/otactl/otactl/pkg/rpc"
)

// Caller is what this package needs from an RPC client; *rpc.Client
// implements it.
type Caller interface {
	Call(ctx context.Context, method string, params any) (json.RawMessage, error)
}

// Device is the OTA API of one device, over one RPC client. It is safe for
// concurrent use if the Caller is.
type Device struct {
	c Caller
}

// New returns the OTA API over c (usually an *rpc.Client).
func New(c Caller) *Device { return &Device{c: c} }

// Caller returns the client the Device calls through.
func (d *Device) Caller() Caller { return d.c }

// Defaults applied when a duration option is zero.
const (
	// DefaultCommitTimeout is how long a new firmware waits for OTA.Commit
	// before rolling back, when no commit timeout is given (as mos).
	DefaultCommitTimeout = 300 * time.Second
	// DefaultUpdateTimeout is the device's update watchdog: an update that
	// makes no progress for this long is aborted (as mos).
	DefaultUpdateTimeout = wire.DefaultUpdateTimeout
)

// AutoCommit, given as a commit timeout, sends commit_timeout 0: the new
// firmware commits itself as soon as it boots, so there is no rollback
// safety net if it misbehaves after boot. Zero means DefaultCommitTimeout.
const AutoCommit time.Duration = -1

// MaxTimeoutSeconds is the longest commit timeout or update watchdog a
// device can hold: it keeps both as a signed 32-bit int of seconds and arms
// its timers with that number times 1000 as a signed 32-bit int of
// milliseconds (ota-common: mgos_set_timer(commit_timeout * 1000, …)), so
// anything above 2147483 s (about 24 days 20 h) wraps on the device, to a
// negative or zero timer — and a commit timeout that reads as 0 or less
// makes the new firmware commit itself at boot, without rollback.
const MaxTimeoutSeconds = wire.MaxTimeoutSeconds

// MaxTimeout is MaxTimeoutSeconds as a duration.
const MaxTimeout = MaxTimeoutSeconds * time.Second

// ErrTimeoutRange is wrapped by the error for a commit timeout or update
// watchdog outside what the device can hold (1..MaxTimeoutSeconds seconds;
// a commit timeout may also be AutoCommit). Nothing is sent then.
var ErrTimeoutRange = fmt.Errorf("must be from 1 to %d seconds (about 24 days: the device arms its timers in milliseconds in a signed 32-bit number)", MaxTimeoutSeconds)

// CheckTimeouts returns an error wrapping ErrTimeoutRange unless the commit
// timeout (0 = default, AutoCommit) and the update watchdog (0 = default)
// fit the device.
func CheckTimeouts(commit, update time.Duration) error {
	if commit != AutoCommit && (commit < 0 || commit > MaxTimeout) {
		return fmt.Errorf("commit timeout %v: %w", commit, ErrTimeoutRange)
	}
	if update < 0 || update > MaxTimeout {
		return fmt.Errorf("update timeout %v: %w", update, ErrTimeoutRange)
	}
	return nil
}

// checkWireSeconds checks a commit timeout already in seconds (snapshot,
// boot state): 0 is allowed there (commit at boot), negative is not.
func checkWireSeconds(what string, s int) error {
	if s < 0 || s > MaxTimeoutSeconds {
		return fmt.Errorf("%s %d s: %w (or 0)", what, s, ErrTimeoutRange)
	}
	return nil
}

// commitSeconds converts a commit-timeout option to the wire value. Check
// it with CheckTimeouts first.
func commitSeconds(d time.Duration) int64 {
	switch {
	case d < 0:
		return 0
	case d == 0:
		return seconds(DefaultCommitTimeout)
	}
	return seconds(d)
}

// seconds rounds d up to whole seconds.
func seconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}

// The contract types, from pkg/ota/wire (one definition for otactl and the
// emulator).
type (
	// BootState is the device's boot configuration (OTA.GetBootState).
	BootState = wire.BootState
	// BootStateChange is the argument of SetBootState: only the non-nil
	// fields are sent, and the device keeps the others.
	BootStateChange = wire.SetBootStateArgs
	// State is the updater state reported by OTA.Status.
	State = wire.State
	// Status is the result of OTA.Status.
	Status = wire.Status
	// SysInfo is the part of Sys.GetInfo that OTA workflows use; Raw holds
	// the whole result.
	SysInfo = wire.SysInfo
	// Firmware identifies a firmware build (manifest version and
	// build_id, or Sys.GetInfo's fw_version and fw_id).
	Firmware = wire.Firmware
	// ReplyError is a result that lacks required fields (wire.ReplyError).
	ReplyError = wire.ReplyError
)

// Updater states (OTA.Status "state").
const (
	StateIdle     = wire.StateIdle
	StateProgress = wire.StateProgress
	StateError    = wire.StateError
	StateSuccess  = wire.StateSuccess
)

// RunningSlotField is the Sys.GetInfo field that names the slot the running
// firmware was booted from (see wire.RunningSlotField).
const RunningSlotField = wire.RunningSlotField

// ErrBadReply is wrapped by *ReplyError: the device answered, without an
// error, but its result does not carry what the command needs. The CLI maps
// it to exit code 1.
var ErrBadReply = wire.ErrBadReply

// ParseBootState decodes an OTA.GetBootState result (wire.ParseBootState).
func ParseBootState(raw json.RawMessage) (BootState, error) { return wire.ParseBootState(raw) }

// ParseStatus decodes an OTA.Status result (wire.ParseStatus).
func ParseStatus(raw json.RawMessage) (Status, error) { return wire.ParseStatus(raw) }

// ParseSysInfo decodes a Sys.GetInfo result (wire.ParseSysInfo).
func ParseSysInfo(raw json.RawMessage) (SysInfo, error) { return wire.ParseSysInfo(raw) }

// GetBootState calls OTA.GetBootState.
func (d *Device) GetBootState(ctx context.Context) (BootState, error) {
	res, err := d.c.Call(ctx, wire.OTAGetBootState, nil)
	if err != nil {
		return BootState{}, err
	}
	return wire.ParseBootState(res)
}

// SetBootState calls OTA.SetBootState with the fields of c that are set. It
// changes only what the next boot does; nothing is re-flashed.
func (d *Device) SetBootState(ctx context.Context, c BootStateChange) error {
	if c.Empty() {
		return fmt.Errorf("%s: nothing to set: give at least one of active slot, revert slot, committed, commit timeout", wire.OTASetBootState)
	}
	if c.CommitTimeout != nil {
		if err := checkWireSeconds(wire.OTASetBootState+": commit timeout", *c.CommitTimeout); err != nil {
			return err
		}
	}
	_, err := d.c.Call(ctx, wire.OTASetBootState, c)
	return err
}

// ErrAlreadyCommitted is wrapped (with the device's *rpc.Error) by Commit
// and Revert when the device refuses because the running firmware is
// already committed, and by CommitAfterHealthCheck when there is nothing to
// commit.
var ErrAlreadyCommitted = errors.New("the running firmware is already committed")

// ErrNothingToCommit is wrapped by CommitAfterHealthCheck when the firmware
// it was asked to commit is committed already (the boot state read before
// committing shows it committed, or OTA.Commit was refused and the boot
// state then shows the same slot committed): nothing is left to do. It
// wraps ErrAlreadyCommitted; a commit refused because the device fell back
// to another slot meanwhile wraps ErrAlreadyCommitted only.
var ErrNothingToCommit = fmt.Errorf("%w", ErrAlreadyCommitted)

// Commit calls OTA.Commit: the firmware on trial becomes permanent.
func (d *Device) Commit(ctx context.Context) error {
	_, err := d.c.Call(ctx, wire.OTACommit, nil)
	if isCode(err, wire.CodeFailed) {
		return fmt.Errorf("%w (nothing to commit): %w", ErrAlreadyCommitted, err)
	}
	return err
}

// Revert calls OTA.Revert: a firmware on trial is abandoned and the device
// reboots into its revert slot about 100 ms after replying.
func (d *Device) Revert(ctx context.Context) error {
	_, err := d.c.Call(ctx, wire.OTARevert, nil)
	if isCode(err, wire.CodeFailed) {
		return fmt.Errorf("%w (only a firmware on trial can be reverted; to boot another slot's firmware, use `otactl bootstate set --active-slot N`): %w", ErrAlreadyCommitted, err)
	}
	return err
}

// CreateSnapshot calls OTA.CreateSnapshot: the running firmware and its
// filesystem are copied to the inactive slot, whose number is returned.
// With setAsRevert the running firmware becomes uncommitted with that slot
// as its fallback; commitTimeout (seconds) is then set too unless negative.
// The device refuses while the running firmware is uncommitted.
func (d *Device) CreateSnapshot(ctx context.Context, setAsRevert bool, commitTimeout int) (int, error) {
	if commitTimeout >= 0 {
		if err := checkWireSeconds(wire.OTACreateSnapshot+": commit timeout", commitTimeout); err != nil {
			return 0, err
		}
	}
	args := wire.CreateSnapshotArgs{SetAsRevert: setAsRevert}
	if commitTimeout >= 0 {
		args.CommitTimeout = &commitTimeout
	}
	raw, err := d.c.Call(ctx, wire.OTACreateSnapshot, args)
	if err != nil {
		return 0, err
	}
	rep, err := wire.ParseSnapshot(raw)
	return rep.Slot, err
}

// Status calls OTA.Status.
func (d *Device) Status(ctx context.Context) (Status, error) {
	raw, err := d.c.Call(ctx, wire.OTAStatus, nil)
	if err != nil {
		return Status{}, err
	}
	return wire.ParseStatus(raw)
}

// GetInfo calls Sys.GetInfo.
func (d *Device) GetInfo(ctx context.Context) (SysInfo, error) {
	raw, err := d.c.Call(ctx, wire.SysGetInfo, nil)
	if err != nil {
		return SysInfo{}, err
	}
	return wire.ParseSysInfo(raw)
}

// Reboot calls Sys.Reboot; the device restarts after delay.
func (d *Device) Reboot(ctx context.Context, delay time.Duration) error {
	args := wire.RebootArgs{DelayMS: delay.Milliseconds()}
	_, err := d.c.Call(ctx, wire.SysReboot, args)
	return err
}

// isCode reports whether err is a device error with this code.
func isCode(err error, code int) bool {
	var re *rpc.Error
	return errors.As(err, &re) && re.Code == code
}

// isDeviceError reports whether err is a reply from the device (as opposed
// to a link failure or a timeout).
func isDeviceError(err error) bool {
	var re *rpc.Error
	return errors.As(err, &re) || errors.Is(err, rpc.ErrAuth)
}

// lostLink reports whether err, from a call made under ctx, means the reply
// did not come (link dropped or the call's own deadline passed) while ctx
// itself is still alive.
func lostLink(ctx context.Context, err error) bool {
	return err != nil && !isDeviceError(err) && ctx.Err() == nil
}

func emit(fn func(Event), e Event) {
	if fn != nil {
		fn(e)
	}
}
