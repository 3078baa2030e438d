package ota

import (
	"context"
	"errors"
	"os"
	"strings"

	"github.com/otactl/otactl/pkg/ota/bundle"
	"github.com/otactl/otactl/pkg/ota/wire"
	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/transport"
)

// Reason is a stable code for why an update (or any command) ended the way
// it did, for scripts that must not parse English. docs/exit-codes.md lists
// each with its exit code; Reason.ExitCode gives the same mapping in code. The
// set only grows: a code, once published, keeps its meaning.
type Reason string

// Reasons. The exit code each goes with is Reason.ExitCode.
const (
	// ReasonOK: the command did what it was asked (no failure).
	ReasonOK Reason = "ok"

	// Refusals: nothing was installed, the boot state is unchanged (exit 6).

	// ReasonUncommitted: the device runs uncommitted firmware, so it takes
	// no update until that one is committed or reverted.
	ReasonUncommitted Reason = "uncommitted"
	// ReasonWrongPlatform: the bundle is for another platform (otactl's
	// pre-check, exact match; or the device's own check).
	ReasonWrongPlatform Reason = "wrong_platform"
	// ReasonBusy: another update is running, or one finished and waits for
	// its reboot.
	ReasonBusy Reason = "busy"
	// ReasonCorruptBundle: the bundle is not a valid one (checksums, sizes,
	// manifest, archive layout), found by otactl or by the device.
	ReasonCorruptBundle Reason = "corrupt_bundle"
	// ReasonDownloadFailed: the device could not download the bundle (HTTP
	// error status, connection closed early, server unreachable).
	ReasonDownloadFailed Reason = "download_failed"
	// ReasonUpdateTimeout: the device's update watchdog (--update-timeout)
	// ended the update.
	ReasonUpdateTimeout Reason = "update_timeout"
	// ReasonBadSignature: the bundle's signatures would not satisfy the
	// device's keys (--pubkey, --sig-req-mask), or the device refused them.
	ReasonBadSignature Reason = "bad_signature"
	// ReasonRejected: the device refused or failed the update for another
	// reason; the message carries its words.
	ReasonRejected Reason = "rejected"
	// ReasonDeviceReset: the device restarted during the update, before it
	// had installed it (reset, power loss): nothing was installed.
	ReasonDeviceReset Reason = "device_reset"

	// Outcomes after the device took the bundle (exit 6).

	// ReasonNoReboot: the device accepted the update but did not reboot
	// within the wait; it still runs the old firmware.
	ReasonNoReboot Reason = "no_reboot"
	// ReasonWrongFirmware: the device rebooted into a firmware that is not
	// the bundle's.
	ReasonWrongFirmware Reason = "wrong_firmware"
	// ReasonRolledBack: the device installed the new firmware and came back
	// on the old one (it crashed or failed at boot, its commit timeout
	// expired before the commit, or it was reverted).
	ReasonRolledBack Reason = "rolled_back"
	// ReasonHealthFailed: the health-check method did not answer without
	// error within the grace period; the firmware was not committed (and,
	// unless --on-health-fail wait, was reverted).
	ReasonHealthFailed Reason = "health_failed"

	// Not an update verdict: otactl could not tell, or was told to stop.

	// ReasonUnreachable: the device could not be reached, or the link
	// dropped (exit 5).
	ReasonUnreachable Reason = "unreachable"
	// ReasonTimeout: the device did not answer, or the outcome was not
	// clear, in time (exit 5).
	ReasonTimeout Reason = "timeout"
	// ReasonDeviceChanged: after a lost link or a reboot, another device
	// answered at the port (a renumbered serial port, a --port link now
	// to another adapter, an address taken over): otactl sent it nothing
	// that changes its state, and cannot tell what the first device did
	// (DeviceChangedError; exit 5).
	ReasonDeviceChanged Reason = "device_changed"
	// ReasonAuth: the device or broker refused the credentials, for a
	// reason none of the codes below names (exit 4).
	ReasonAuth Reason = "auth_failed"
	// ReasonAuthRequired: the device wants credentials and none were given
	// (transport.AuthError; exit 4).
	ReasonAuthRequired Reason = "auth_required"
	// ReasonAuthRefused: the device or broker refused the credentials
	// given (exit 4).
	ReasonAuthRefused Reason = "auth_refused"
	// ReasonForbidden: the device's ACL refused the call (error 403), also
	// when it stops an update or push (exit 4).
	ReasonForbidden Reason = "forbidden"
	// ReasonAuthMalformed: the device could not use the authentication
	// sent (exit 4).
	ReasonAuthMalformed Reason = "auth_malformed"
	// ReasonTLS: TLS with the device or broker failed (transport.TLSError;
	// exit 4).
	ReasonTLS Reason = "tls"
	// ReasonDeviceError: the device answered a call with an RPC error that
	// is not about an update (exit 3), e.g. OTA.Commit on a committed
	// firmware.
	ReasonDeviceError Reason = "device_error"
	// ReasonUsage: the command line was wrong; nothing was sent (exit 2).
	ReasonUsage Reason = "usage"
	// ReasonInterrupted: Ctrl-C, SIGTERM or SIGHUP (exit 1).
	ReasonInterrupted Reason = "interrupted"
	// ReasonNotRPC: the device answered something that is not an RPC frame
	// (exit 1).
	ReasonNotRPC Reason = "not_rpc"
	// ReasonDuplicateDevice: more than one device answered one request
	// (two devices with one id on an MQTT broker), so nothing they said can
	// be trusted (exit 1).
	ReasonDuplicateDevice Reason = "duplicate_device"
	// ReasonBadReply: the device's reply lacks fields the command needs
	// (exit 1).
	ReasonBadReply Reason = "bad_reply"
	// ReasonFailed: any other failure (exit 1).
	ReasonFailed Reason = "failed"
)

// Reasons lists every reason code, in the order of docs/exit-codes.md.
func Reasons() []Reason {
	return []Reason{ReasonOK,
		ReasonUncommitted, ReasonWrongPlatform, ReasonBusy, ReasonCorruptBundle, ReasonBadSignature,
		ReasonDownloadFailed, ReasonUpdateTimeout, ReasonRejected, ReasonDeviceReset,
		ReasonNoReboot, ReasonWrongFirmware, ReasonRolledBack, ReasonHealthFailed,
		ReasonUnreachable, ReasonTimeout, ReasonDeviceChanged,
		ReasonAuthRequired, ReasonAuthRefused, ReasonForbidden, ReasonAuthMalformed, ReasonTLS, ReasonAuth,
		ReasonDeviceError, ReasonUsage,
		ReasonInterrupted, ReasonNotRPC, ReasonDuplicateDevice, ReasonBadReply, ReasonFailed}
}

// Exit codes otactl ends with (docs/exit-codes.md). Every command uses
// them; Reason.ExitCode maps each reason to one.
const (
	ExitOK          = 0 // success
	ExitFailure     = 1 // any other failure, an answer that is not an RPC frame, two devices answering
	ExitUsage       = 2 // bad flag, argument or --port value
	ExitRPCError    = 3 // the device returned an RPC error
	ExitAuth        = 4 // authentication failed, ACL refused the call, TLS failed
	ExitUnreachable = 5 // device unreachable or timed out
	ExitUpdate      = 6 // the update did not take (rejected, failed, rolled back)
)

// ExitCode is the exit code otactl ends with for r; an unknown code is
// ExitFailure.
func (r Reason) ExitCode() int {
	switch r {
	case ReasonOK:
		return ExitOK
	case ReasonUncommitted, ReasonWrongPlatform, ReasonBusy, ReasonCorruptBundle, ReasonBadSignature,
		ReasonDownloadFailed, ReasonUpdateTimeout, ReasonRejected, ReasonDeviceReset,
		ReasonNoReboot, ReasonWrongFirmware, ReasonRolledBack, ReasonHealthFailed:
		return ExitUpdate
	case ReasonUnreachable, ReasonTimeout, ReasonDeviceChanged:
		return ExitUnreachable
	case ReasonAuth, ReasonAuthRequired, ReasonAuthRefused, ReasonForbidden, ReasonAuthMalformed, ReasonTLS:
		return ExitAuth
	case ReasonDeviceError:
		return ExitRPCError
	case ReasonUsage:
		return ExitUsage
	}
	return ExitFailure
}

// Known reports whether r is one of Reasons.
func (r Reason) Known() bool {
	for _, k := range Reasons() {
		if r == k {
			return true
		}
	}
	return false
}

// ReasonError attaches a reason to an error, for failures whose cause
// ReasonOf cannot tell from the error's type alone.
type ReasonError struct {
	Reason Reason
	Err    error
}

func (e *ReasonError) Error() string { return e.Err.Error() }
func (e *ReasonError) Unwrap() error { return e.Err }

// WithReason returns err carrying reason (nil stays nil).
func WithReason(reason Reason, err error) error {
	if err == nil {
		return nil
	}
	return &ReasonError{Reason: reason, Err: err}
}

// ErrNotRPC is matched by every error meaning that the device answered
// something that is not an RPC frame (transport.ErrNotRPC): ReasonNotRPC.
var ErrNotRPC = transport.ErrNotRPC

// ReasonOf returns the reason code for an error from this package, pkg/rpc
// or a transport: the innermost explicit one (WithReason, or an error with
// a Reason() string method), else one told from the error's kind, in the
// same order of precedence as the CLI's exit codes (an update failure wins
// over the device's *rpc.Error it wraps). A nil error is ReasonOK.
func ReasonOf(err error) Reason {
	if err == nil {
		return ReasonOK
	}
	var re *ReasonError
	if errors.As(err, &re) {
		return re.Reason
	}
	var coded interface{ Reason() string } // another package's coded error
	if errors.As(err, &coded) {
		return Reason(coded.Reason())
	}
	switch {
	case errors.Is(err, context.Canceled):
		return ReasonInterrupted
	case errors.Is(err, ErrTimeoutRange), errors.Is(err, transport.ErrBadPort):
		return ReasonUsage
	case errors.Is(err, rpc.ErrDuplicateReply):
		return ReasonDuplicateDevice
	case errors.Is(err, ErrUpdateFailed):
		switch {
		case errors.Is(err, ErrHealthCheck):
			return ReasonHealthFailed
		case errors.Is(err, ErrBusy):
			return ReasonBusy
		case errors.Is(err, ErrUncommitted):
			return ReasonUncommitted
		}
		var rpcErr *rpc.Error
		if errors.As(err, &rpcErr) {
			return DeviceMessageReason(rpcErr.Message)
		}
		var be *bundle.Error
		if errors.As(err, &be) {
			return DeviceMessageReason(be.Msg)
		}
		return ReasonRejected
	case errors.Is(err, ErrAlreadyCommitted):
		return ReasonDeviceError
	case errors.Is(err, rpc.ErrAuth):
		return ReasonAuth
	}
	var rpcErr *rpc.Error
	if errors.As(err, &rpcErr) {
		if rpcErr.Code == 401 {
			return ReasonAuth
		}
		return ReasonDeviceError
	}
	var le *rpc.LinkError
	switch {
	case errors.Is(err, ErrNotRPC):
		return ReasonNotRPC
	case errors.Is(err, ErrBadReply):
		return ReasonBadReply
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return ReasonTimeout
	case errors.As(err, &le), errors.Is(err, transport.ErrClosed):
		return ReasonUnreachable
	}
	var pe *PushError
	if errors.As(err, &pe) {
		return ReasonUnreachable // a push cut by its link; the boot state is unchanged
	}
	return ReasonFailed
}

// ErrUncommitted is wrapped (with ErrUpdateFailed) when an update is
// refused because the running firmware is not committed.
var ErrUncommitted = errors.New("the running firmware is not committed")

// DeviceMessageReason tells the reason from a device's status message (the
// message of an OTA.Update/OTA.End error, or OTA.Status "msg"): the fixed
// messages of the device (pkg/ota/wire, pkg/ota/bundle; docs/protocol.md)
// and the emulator's. Anything else is ReasonRejected.
func DeviceMessageReason(msg string) Reason {
	has := func(p ...string) bool {
		for _, s := range p {
			if wire.HasMessage(msg, s) {
				return true
			}
		}
		return false
	}
	switch {
	case has(bundle.ErrWrongPlatform.Msg):
		return ReasonWrongPlatform
	case has(bundle.ErrSignature.Msg):
		return ReasonBadSignature
	case has(wire.MsgNotCommitted):
		return ReasonUncommitted
	case has(wire.MsgAlreadyRunning, wire.MsgInitFailed):
		return ReasonBusy
	case has(wire.MsgTimedOut):
		return ReasonUpdateTimeout
	case has(wire.MsgInterrupted):
		return ReasonDeviceReset
	case has(wire.MsgDownloadFailed, wire.MsgInvalidContentLength, wire.MsgFailedToConnect):
		return ReasonDownloadFailed
	case wire.IsInvalidHTTPResponse(msg):
		return ReasonDownloadFailed
	case has(bundle.ErrMalformed.Msg, bundle.ErrCompressed.Msg, bundle.ErrCRC.Msg, bundle.ErrManifestParse.Msg,
		bundle.ErrManifestField.Msg, bundle.ErrDigest.Msg, bundle.ErrSize.Msg, bundle.ErrFileName.Msg,
		bundle.ErrMissingPart.Msg, bundle.ErrBadSrc.Msg, bundle.ErrBadPartName.Msg, bundle.ErrDuplicateSrc.Msg,
		wire.MsgNotAllData, wire.MsgPrematureEnd, wire.MsgInvalidPart):
		return ReasonCorruptBundle
	}
	return ReasonRejected
}

// SamePlatform reports whether a bundle's platform is the device's arch,
// ignoring case. (The device itself accepts any platform that merely
// starts with its own, so an esp32 takes an esp32c3 bundle: otactl's
// pre-check is this stricter one.)
func SamePlatform(bundlePlatform, deviceArch string) bool {
	return strings.EqualFold(strings.TrimSpace(bundlePlatform), strings.TrimSpace(deviceArch))
}
