package cli

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
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
	Before         *bootFields     `json:"before,omitempty"`
	After          *bootFields     `json:"after,omitempty"`
	FromVersion    string          `json:"from_version,omitempty"`
	Version        string          `json:"version,omitempty"`
	BuildID        string          `json:"build_id,omitempty"`
	CommitDeadline *time.Time      `json:"commit_deadline,omitempty"`
	CommitIn       *float64        `json:"commit_timeout_left_seconds,omitempty"`
	HealthChecks   int             `json:"health_checks,omitempty"`
	Transfer       *transferInfo   `json:"transfer,omitempty"`
	Info           json.RawMessage `json:"info,omitempty"`
	// Seconds is how long the whole run took; Phases how long each of its
	// phases took, in the order the run met them.
	Seconds float64     `json:"seconds,omitempty"`
	Phases  []phaseInfo `json:"phases,omitempty"`
	// Delivery says how the bundle reached the device: "download" (the
	// device fetched --url or the bundle server of --file) or "push" (sent
	// over the RPC link: push, ota, or update --file over a serial port).
	Delivery string `json:"delivery,omitempty"`
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

// bootFields is a boot state in otactl's JSON documents, its fields in
// the order otactl has always printed them (a device sends is_committed
// before revert_slot: wire.BootState).
type bootFields struct {
	ActiveSlot    int  `json:"active_slot"`
	RevertSlot    int  `json:"revert_slot"`
	IsCommitted   bool `json:"is_committed"`
	CommitTimeout int  `json:"commit_timeout"`
}

func bootFieldsOf(bs *ota.BootState) *bootFields {
	if bs == nil {
		return nil
	}
	return &bootFields{ActiveSlot: bs.ActiveSlot, RevertSlot: bs.RevertSlot, IsCommitted: bs.IsCommitted, CommitTimeout: bs.CommitTimeout}
}

// phaseInfo is one phase of an update in --json: check, transfer, reboot,
// health, commit or revert (ota.Phase).
type phaseInfo struct {
	Phase   ota.Phase `json:"phase"`
	Seconds float64   `json:"seconds"`
}

// transferInfo is what a push reports in --json.
type transferInfo struct {
	Bytes     int64   `json:"bytes"`
	ChunkSize int     `json:"chunk_size"`
	Chunks    int     `json:"chunks"`
	Retries   int     `json:"retries"`
	Resumes   int     `json:"resumes"`
	Seconds   float64 `json:"seconds"`
	BytesPerS float64 `json:"bytes_per_second"`
}

// fill sets the document from an update's report (completeUpdateDoc adds
// the exit code and the error of a failure).
func (r *updateResult) fill(rep *ota.Report) {
	r.Result, r.Reason, r.Message = string(rep.Result), rep.Reason, rep.Message
	r.Committed, r.Attempted, r.sent = rep.Committed, rep.Attempted, rep.Sent
	if rep.Before != nil {
		r.Before, r.FromVersion = bootFieldsOf(&rep.Before.Boot), rep.Before.Info.FWVersion
	}
	r.After = bootFieldsOf(rep.After)
	r.Version, r.BuildID = rep.Running.Version, rep.Running.BuildID
	if rep.RunningInfo != nil {
		r.Info = rawJSON(rep.RunningInfo.Raw)
	}
	if !rep.CommitDeadline.IsZero() {
		d := rep.CommitDeadline
		left := time.Until(d).Seconds()
		r.CommitDeadline, r.CommitIn = &d, &left
	}
	if rep.Reason == ota.ReasonHealthFailed {
		r.HealthChecks = rep.HealthChecks
	}
	r.Seconds, r.Phases = millis(rep.Elapsed), nil
	for _, pt := range rep.Phases {
		r.Phases = append(r.Phases, phaseInfo{Phase: pt.Phase, Seconds: millis(pt.Duration)})
	}
	if t := rep.Transfer; t != nil {
		r.Transfer = &transferInfo{Bytes: t.Bytes, ChunkSize: t.ChunkSize, Chunks: t.Chunks, Retries: t.Retries,
			Resumes: t.Resumes, Seconds: t.Elapsed.Seconds(), BytesPerS: t.BytesPerSecond()}
	}
}

// renderUpdate prints the report of an update or push: one JSON document
// (--json), or a line on stdout; and returns the error that gives the
// command its exit code (ota.Reason.ExitCode). A failure the device was
// seen to end in (rolled back, not applied, health check failed) is a
// labelled verdict on stdout; any other failure the error root prints.
func (f *Factory) renderUpdate(rep *ota.Report) error {
	doc := f.updateDoc()
	doc.fill(rep)
	if rep.OK() {
		if f.G.JSON {
			return f.writeUpdateDoc(doc, nil)
		}
		f.printUpdated(rep)
		return nil
	}
	if rep.Observed {
		return f.updateFailed(doc, rep.Err)
	}
	return &ExitError{Code: rep.ExitCode(), Err: rep.Err}
}

// printUpdated is the line of an update that took (or, with --no-wait,
// was accepted).
func (f *Factory) printUpdated(rep *ota.Report) {
	if rep.Result == ota.AcceptedOnly {
		f.out("the device accepted the update and is rebooting into it (not waiting: check with 'otactl bootstate').")
		return
	}
	p := f.outPalette()
	var before ota.Observation
	if rep.Before != nil {
		before = *rep.Before
	}
	var after ota.BootState
	if rep.After != nil {
		after = *rep.After
	}
	name := rep.Running.Version
	if i := rep.RunningInfo; i != nil {
		name = strings.TrimSpace(i.App + " " + i.FWVersion)
	}
	if rep.Committed {
		f.out("%s slot %d runs %s, committed (was %s on slot %d).", p.green("updated:"), after.ActiveSlot, name, before.Info.FWVersion, before.Boot.ActiveSlot)
		return
	}
	left := ""
	if !rep.CommitDeadline.IsZero() {
		left = " in " + humanDuration(time.Until(rep.CommitDeadline))
	}
	f.out("%s slot %d runs %s, %s. The device falls back to slot %d (%s)%s unless you run `otactl commit`.",
		p.green("updated:"), after.ActiveSlot, name, p.yellow("not yet committed"), after.RevertSlot, before.Info.FWVersion, left)
}

// failedLabel heads the line of an update that did not take: only a
// device that came back on its old firmware rolled back; one that never
// switched (the update failed, or it did not reboot) did not apply it.
func failedLabel(result string) string {
	switch result {
	case string(ota.RolledBack):
		return "ROLLED BACK:"
	case string(ota.HealthCheckFailed):
		return "HEALTH CHECK FAILED:"
	}
	return "NOT APPLIED:"
}

// updateEvents shows an update's progress on stderr: the bar (bytes the
// device fetched or confirmed, or the device's percentage), the steps
// worth telling, and with --verbose the wait for the reboot and each
// retry of the health check.
func (f *Factory) updateEvents(bar *progressBar, healthMethod string) func(ota.Event) {
	return func(ev ota.Event) {
		switch ev.Kind {
		case ota.EventPhase:
			if ev.Phase != ota.PhaseTransfer {
				bar.Done()
			}
		case ota.EventNote:
			f.progressNote("%s", ev.Msg)
		case ota.EventWarning:
			f.note("%s", ev.Msg)
		case ota.EventServed, ota.EventSent:
			bar.Bytes(ev.Sent, ev.Total)
		case ota.EventDownload:
			if ev.Phase == ota.PhaseTransfer {
				bar.Percent(ev.Percent)
			}
		case ota.EventTransferred:
			bar.Done()
			f.progressNote("%s", ev.Msg)
		case ota.EventRetry, ota.EventAbort, ota.EventResumed:
			bar.Done()
			f.progressNote("%s", ev.Msg)
		case ota.EventReconnecting:
			bar.Done()
			if ev.Attempt == 1 || f.G.Verbose {
				f.progressNote("%s", ev.Msg)
			}
		case ota.EventBegin:
			if f.G.Verbose {
				f.note("%s", ev.Msg)
			}
		case ota.EventHealthCheck:
			if f.G.Verbose && ev.Attempt > 1 {
				f.note("health check: try %d of %s (last: %v)", ev.Attempt, healthMethod, ev.Err)
			}
		default:
			if f.G.Verbose && ev.Phase == ota.PhaseReboot && ev.Msg != "" {
				f.note("%s", ev.Msg)
			}
		}
	}
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
// with its exit code (reasonFor(err).ExitCode() == ExitCode(err)).
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
		return string(ota.HealthCheckFailed)
	case ota.ReasonUncommitted, ota.ReasonWrongPlatform, ota.ReasonBusy, ota.ReasonCorruptBundle, ota.ReasonBadSignature,
		ota.ReasonDownloadFailed, ota.ReasonUpdateTimeout, ota.ReasonRejected, ota.ReasonDeviceReset,
		ota.ReasonNoReboot, ota.ReasonWrongFirmware, ota.ReasonUsage:
		return string(ota.NotApplied)
	}
	var dc *ota.DeviceChangedError
	if errors.As(err, &dc) {
		if dc.NothingInstalled || !sent {
			return string(ota.NotApplied)
		}
		return string(ota.Unknown)
	}
	var pe *ota.PushError
	if errors.As(err, &pe) || !sent {
		return string(ota.NotApplied) // a push that failed leaves the boot state unchanged
	}
	return string(ota.Unknown)
}

// millis is d in seconds, to the millisecond, as otactl's JSON documents
// give durations.
func millis(d time.Duration) float64 { return math.Round(d.Seconds()*1000) / 1000 }
