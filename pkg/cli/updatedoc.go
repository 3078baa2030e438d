package cli

import (
	"encoding/json"
	"errors"
	"time"

	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/transport"
)

// updateResult is the --json document of update and push: exactly one is
// printed, on success and on every failure (docs/commands.md).
type updateResult struct {
	// Result is updated_committed, updated_uncommitted, rolled_back,
	// not_applied, health_check_failed, accepted (--no-wait), or unknown
	// (otactl could not tell: the device stopped answering after the
	// update was sent, or otactl was interrupted).
	Result string `json:"result"`
	// Reason is the stable code (ota.Reason); Message the sentence.
	Reason    ota.Reason `json:"reason"`
	Message   string     `json:"message,omitempty"`
	ExitCode  int        `json:"exit_code"`
	Committed bool       `json:"committed"`
	// Attempted is the firmware the update tried to install (the bundle's
	// manifest; for --url, known only once it runs).
	Attempted      *ota.Firmware   `json:"attempted,omitempty"`
	Before         *ota.BootState  `json:"before,omitempty"`
	After          *ota.BootState  `json:"after,omitempty"`
	FromVersion    string          `json:"from_version,omitempty"`
	Version        string          `json:"version,omitempty"`
	BuildID        string          `json:"build_id,omitempty"`
	CommitDeadline *time.Time      `json:"commit_deadline,omitempty"`
	CommitIn       *float64        `json:"commit_timeout_left_seconds,omitempty"`
	HealthChecks   int             `json:"health_checks,omitempty"`
	Transfer       *transferInfo   `json:"transfer,omitempty"`
	Info           json.RawMessage `json:"info,omitempty"`
	// Error is the error text of a failure (as in every command's JSON
	// error document), RPCError the device's error object when there is
	// one.
	Error    string         `json:"error,omitempty"`
	RPCError map[string]any `json:"rpc_error,omitempty"`

	// sent: the checks passed and the update may have reached the device.
	sent bool
}

// updateDoc returns the document of the update or push in progress,
// starting it if needed.
func (f *Factory) updateDoc() *updateResult {
	if f.upd == nil {
		f.upd = &updateResult{}
	}
	return f.upd
}

// setOutcome fills the document from WaitOutcome's verdict.
func (r *updateResult) setOutcome(out *ota.Outcome) {
	r.Result, r.Reason, r.Message = string(out.Result), out.Reason, out.Message
	r.After = &out.After
	r.Version, r.BuildID = out.Info.FWVersion, out.Info.FWID
	r.Info = rawJSON(out.Info.Raw)
	r.Committed = out.After.IsCommitted
}

// writeUpdateDoc completes the document for err (nil: success) and prints
// it.
func (f *Factory) writeUpdateDoc(r *updateResult, err error) error {
	completeUpdateDoc(r, err)
	return writeJSON(f.IO.Out, r)
}

// completeUpdateDoc fills the exit code, and for a failure the reason,
// result, message and error, of the document for err (nil: success).
func completeUpdateDoc(r *updateResult, err error) {
	r.ExitCode = ExitCode(err)
	if err != nil {
		if r.Reason == "" || r.Reason == ota.ReasonOK {
			r.Reason = reasonFor(err)
		}
		if r.Result == "" {
			r.Result = resultFor(err, r.Reason, r.sent)
		}
		if r.Message == "" {
			r.Message = err.Error()
		}
		r.Error = err.Error()
		var re *rpc.Error
		if errors.As(err, &re) {
			r.RPCError = map[string]any{"code": re.Code, "message": re.Message}
		}
	} else if r.Reason == "" {
		r.Reason = ota.ReasonOK
	}
}

// updateFailed reports an update that did not take (exit 6): the JSON
// document, or "LABEL: message" on stdout.
func (f *Factory) updateFailed(r *updateResult, err error) error {
	ee := &ExitError{Code: ExitUpdate, Err: err, Silent: !f.G.JSON}
	if f.G.JSON {
		if werr := f.writeUpdateDoc(r, ee); werr != nil {
			return werr
		}
		return ee
	}
	f.out("%s %s", f.outPalette().red(failedLabel(r.Result)), r.Message)
	return ee
}

// updateCommands are the commands whose --json failure document is an
// update document (result, reason, …), whatever stops them.
var updateCommands = map[string]bool{"update": true, "push": true}

// reasonFor is the reason code of any error a command returns, consistent
// with its exit code (ota.ReasonExit[reasonFor(err)] == ExitCode(err)).
func reasonFor(err error) ota.Reason {
	if err == nil {
		return ota.ReasonOK
	}
	var ie *InterruptedError
	if errors.As(err, &ie) {
		return ota.ReasonInterrupted
	}
	var ue *UsageError
	if errors.As(err, &ue) || errors.Is(err, transport.ErrBadPort) {
		return ota.ReasonUsage
	}
	r := ota.ReasonOf(err)
	code := ExitCode(err)
	if r.ExitCode() == code {
		return r
	}
	// The CLI's own classification decided another code: name it.
	switch code {
	case ExitUpdate:
		return ota.ReasonRejected
	case ExitUnreachable:
		if errors.Is(err, ota.ErrShuttingDown) || r == ota.ReasonTimeout {
			return ota.ReasonTimeout
		}
		return ota.ReasonUnreachable
	case ExitAuth:
		return ota.ReasonAuth
	case ExitRPCError:
		return ota.ReasonDeviceError
	case ExitUsage:
		return ota.ReasonUsage
	}
	if r == ota.ReasonNotRPC || r == ota.ReasonBadReply || r == ota.ReasonInterrupted || r == ota.ReasonDuplicateDevice {
		return r
	}
	return ota.ReasonFailed
}

// resultFor is the "result" of a failed update or push: not_applied when
// otactl knows nothing was installed, unknown when it cannot tell.
func resultFor(err error, r ota.Reason, sent bool) string {
	switch r {
	case ota.ReasonRolledBack:
		return string(ota.RolledBack)
	case ota.ReasonHealthFailed:
		return "health_check_failed"
	case ota.ReasonUncommitted, ota.ReasonWrongPlatform, ota.ReasonBusy, ota.ReasonCorruptBundle, ota.ReasonBadSignature,
		ota.ReasonDownloadFailed, ota.ReasonUpdateTimeout, ota.ReasonRejected, ota.ReasonDeviceReset,
		ota.ReasonNoReboot, ota.ReasonWrongFirmware, ota.ReasonUsage:
		return string(ota.NotApplied)
	}
	var pe *ota.PushError
	if errors.As(err, &pe) || !sent {
		return string(ota.NotApplied) // a push that failed leaves the boot state unchanged
	}
	return "unknown"
}
