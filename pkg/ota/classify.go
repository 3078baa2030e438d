package ota

import (
	"context"
	"errors"
	"os"

	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/transport"
)

// InterruptedError marks work stopped by its caller (Ctrl-C, SIGTERM or
// SIGHUP on the command line): exit code 1, reason interrupted. Msg, when
// set, says in what state the device was left; Err is what the interrupted
// step returned.
type InterruptedError struct {
	Msg string
	Err error
}

func (e *InterruptedError) Error() string {
	if e.Msg != "" {
		return "interrupted: " + e.Msg
	}
	return "interrupted: " + e.Err.Error()
}

func (e *InterruptedError) Unwrap() error { return e.Err }

// Reason is ReasonInterrupted.
func (e *InterruptedError) Reason() string { return string(ReasonInterrupted) }

// ExitCodeOf maps an error of this package, pkg/rpc or a transport to the
// exit code otactl ends with (docs/exit-codes.md), in this order: an
// interruption; a reason attached with WithReason (its code); a usage
// error; more than one
// device answering; refused credentials or TLS; an update that did not
// take; a device's RPC error; an answer that is not RPC; no answer or a
// lost link. Anything else is ExitFailure. nil is ExitOK.
func ExitCodeOf(err error) int {
	if err == nil {
		return ExitOK
	}
	var ie *InterruptedError
	if errors.As(err, &ie) {
		return ExitFailure
	}
	var re *ReasonError
	if errors.As(err, &re) {
		return re.Reason.ExitCode()
	}
	if errors.Is(err, transport.ErrBadPort) || errors.Is(err, ErrTimeoutRange) {
		return ExitUsage
	}
	// More than one device answers at this address: nothing else the
	// command concluded can be trusted.
	if errors.Is(err, rpc.ErrDuplicateReply) {
		return ExitFailure
	}
	// Refused credentials, an ACL's 403 and a TLS failure are exit 4 even
	// where an update step wrapped them: the device refused the caller,
	// not the bundle.
	if errors.Is(err, rpc.ErrAuth) {
		return ExitAuth
	}
	// Refused or failed updates wrap the device's *rpc.Error too: the
	// update outcome wins.
	if errors.Is(err, ErrUpdateFailed) {
		return ExitUpdate
	}
	// Commit/revert on a committed firmware: the device's -1, or otactl's
	// check of the same condition.
	if errors.Is(err, ErrAlreadyCommitted) {
		return ExitRPCError
	}
	var rpcErr *rpc.Error
	if errors.As(err, &rpcErr) {
		if rpcErr.Code == 401 {
			return ExitAuth
		}
		return ExitRPCError
	}
	// The device answered, with something that is not an RPC frame: it was
	// reached, so not exit 5.
	if errors.Is(err, transport.ErrNotRPC) {
		return ExitFailure
	}
	var le *rpc.LinkError
	if errors.As(err, &le) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, transport.ErrClosed) ||
		errors.Is(err, os.ErrDeadlineExceeded) {
		return ExitUnreachable
	}
	return ExitFailure
}

// Classify returns the reason code of err that goes with its exit code
// (ExitCodeOf): ReasonOf when the two agree, else the general reason of
// that exit code. nil is ReasonOK.
func Classify(err error) Reason {
	if err == nil {
		return ReasonOK
	}
	return reasonForCode(err, ExitCodeOf(err))
}

// reasonForCode is the reason of err for a caller that decided its exit
// code: ReasonOf(err) when that reason has this code, else the general
// reason of the code.
func reasonForCode(err error, code int) Reason {
	r := ReasonOf(err)
	if r.ExitCode() == code {
		return r
	}
	switch code {
	case ExitUpdate:
		return ReasonRejected
	case ExitUnreachable:
		if errors.Is(err, ErrShuttingDown) || r == ReasonTimeout {
			return ReasonTimeout
		}
		return ReasonUnreachable
	case ExitAuth:
		return ReasonAuth
	case ExitRPCError:
		return ReasonDeviceError
	case ExitUsage:
		return ReasonUsage
	}
	if r == ReasonNotRPC || r == ReasonBadReply || r == ReasonInterrupted || r == ReasonDuplicateDevice {
		return r
	}
	return ReasonFailed
}

// ReasonForExit is the reason of err once its caller decided that it ends
// with exit code code (the CLI's own error types decide some): see
// Classify.
func ReasonForExit(err error, code int) Reason {
	if err == nil {
		return ReasonOK
	}
	return reasonForCode(err, code)
}

// ResultOf is the Result of an update that failed with err and reason:
// NotApplied when nothing was installed (every refusal, and any failure
// before the update was sent), RolledBack, HealthCheckFailed, or Unknown
// when the device may have taken the update and no verdict came.
func ResultOf(err error, r Reason, sent bool) Result {
	switch r {
	case ReasonRolledBack:
		return RolledBack
	case ReasonHealthFailed:
		return HealthCheckFailed
	case ReasonUncommitted, ReasonWrongPlatform, ReasonBusy, ReasonCorruptBundle, ReasonBadSignature,
		ReasonDownloadFailed, ReasonUpdateTimeout, ReasonRejected, ReasonDeviceReset,
		ReasonNoReboot, ReasonWrongFirmware, ReasonUsage:
		return NotApplied
	}
	var dc *DeviceChangedError
	if errors.As(err, &dc) {
		if dc.NothingInstalled || !sent {
			return NotApplied
		}
		return Unknown
	}
	var pe *PushError
	if errors.As(err, &pe) || !sent {
		return NotApplied // a push that failed leaves the boot state unchanged
	}
	return Unknown
}

// exitAs attaches to err the reason that goes with exit code code (as
// Classify would pick it), for failures whose code the workflow decides
// rather than the error's kind: an update refused (ExitUpdate), a device
// unreachable (ExitUnreachable), a usage error (ExitUsage).
func exitAs(code int, err error) error {
	if err == nil {
		return nil
	}
	return WithReason(reasonForCode(err, code), err)
}
