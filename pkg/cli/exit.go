package cli

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/transport"
)

// Exit codes: pkg/ota owns them (docs/exit-codes.md); the CLI's names are
// the same constants.
const (
	ExitOK          = ota.ExitOK
	ExitFailure     = ota.ExitFailure
	ExitUsage       = ota.ExitUsage
	ExitRPCError    = ota.ExitRPCError
	ExitAuth        = ota.ExitAuth
	ExitUnreachable = ota.ExitUnreachable
	ExitUpdate      = ota.ExitUpdate
)

// UsageError marks an error caused by how the command was called.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// usageErrorf returns a *UsageError with a formatted message.
func usageErrorf(format string, args ...any) error {
	return &UsageError{Err: fmt.Errorf(format, args...)}
}

// UnreachableError marks a failure to reach the device (dial failed, link
// lost, no answer in time).
type UnreachableError struct{ Err error }

func (e *UnreachableError) Error() string { return e.Err.Error() }
func (e *UnreachableError) Unwrap() error { return e.Err }

// ExitError carries an explicit exit code, for outcomes that are not Go
// errors of one of the kinds above (an update that rolled back). Silent
// means the message was already printed.
type ExitError struct {
	Code   int
	Err    error
	Silent bool
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// InterruptedError marks a command stopped by Ctrl-C, SIGTERM or SIGHUP
// (exit code 1): pkg/ota's, which an update's Report carries too. Msg,
// when set, says in what state the device was left; Err is what the
// interrupted step returned.
type InterruptedError = ota.InterruptedError

// interrupted marks err as the result of an interruption, keeping a more
// precise *InterruptedError if err already is one.
func interrupted(err error) error {
	var ie *InterruptedError
	if errors.As(err, &ie) {
		return err
	}
	return &InterruptedError{Err: err}
}

// ExitCode maps an error to the documented exit code.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var ie *InterruptedError
	if errors.As(err, &ie) {
		return ExitFailure
	}
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	var ue *UsageError
	if errors.As(err, &ue) || errors.Is(err, transport.ErrBadPort) || errors.Is(err, ota.ErrTimeoutRange) {
		return ExitUsage
	}
	// A reason pkg/ota attached decides the code (ota.Reason.ExitCode).
	var re0 *ota.ReasonError
	if errors.As(err, &re0) {
		return re0.Reason.ExitCode()
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
	if errors.Is(err, ota.ErrUpdateFailed) {
		return ExitUpdate
	}
	// Commit/revert on a committed firmware: the device's -1, or otactl's
	// check of the same condition.
	if errors.Is(err, ota.ErrAlreadyCommitted) {
		return ExitRPCError
	}
	var re *rpc.Error
	if errors.As(err, &re) {
		if re.Code == 401 {
			return ExitAuth
		}
		return ExitRPCError
	}
	// The device answered, with something that is not an RPC frame: it was
	// reached, so not exit 5.
	if errors.Is(err, transport.ErrNotRPC) {
		return ExitFailure
	}
	var un *UnreachableError
	var le *rpc.LinkError
	if errors.As(err, &un) || errors.As(err, &le) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, transport.ErrClosed) ||
		errors.Is(err, os.ErrDeadlineExceeded) {
		return ExitUnreachable
	}
	return ExitFailure
}
