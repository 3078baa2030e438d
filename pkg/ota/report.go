package ota

import (
	"time"
)

// More results of an Updater's run, besides the verdicts of WaitOutcome
// (UpdatedUncommitted, UpdatedCommitted, RolledBack, NotApplied).
const (
	// HealthCheckFailed: the new firmware runs uncommitted but failed its
	// health check, and was not reverted (Updater.OnHealthFail wait, or the
	// revert did not go through): it falls back at its commit timeout or
	// at any reboot.
	HealthCheckFailed Result = "health_check_failed"
	// AcceptedOnly: the device accepted the update and reboots into it;
	// the run did not wait for the outcome (Updater.NoWait).
	AcceptedOnly Result = "accepted"
	// Unknown: the update may have reached the device, but no verdict came
	// (the device stopped answering, or the run was interrupted).
	Unknown Result = "unknown"
)

// Source says how the bundle reaches the device.
type Source string

// Sources.
const (
	// SourceURL: the device downloads it from a URL (OTA.Update).
	SourceURL Source = "url"
	// SourceServed: otactl serves a local file to the device over HTTP
	// (BundleServer) and the device downloads it (OTA.Update).
	SourceServed Source = "served"
	// SourcePushed: otactl sends a local file through the RPC link
	// (OTA.Begin, OTA.Write, OTA.End).
	SourcePushed Source = "pushed"
)

// Phase names a step of an Updater's run.
type Phase string

// Phases, in the order a run meets them.
const (
	// PhaseCheck: reading the device and refusing what it would refuse.
	PhaseCheck Phase = "check"
	// PhaseTransfer: the device downloads the bundle, or otactl pushes it.
	PhaseTransfer Phase = "transfer"
	// PhaseReboot: waiting for the device to reboot and tell what it runs.
	PhaseReboot Phase = "reboot"
	// PhaseHealth: calling the health method of the new firmware.
	PhaseHealth Phase = "health"
	// PhaseCommit: OTA.Commit and checking the boot state.
	PhaseCommit Phase = "commit"
	// PhaseRevert: reverting a firmware that failed its health check and
	// waiting for the device to come back.
	PhaseRevert Phase = "revert"
)

// PhaseTime is how long a phase took.
type PhaseTime struct {
	Phase    Phase         `json:"phase"`
	Start    time.Time     `json:"start"`
	Duration time.Duration `json:"duration_ns"`
}

// TransferStats describe a push (SourcePushed).
type TransferStats struct {
	Bytes     int64 `json:"bytes"`
	ChunkSize int   `json:"chunk_size"`
	Chunks    int   `json:"chunks"`
	// Retries counts write attempts beyond the first; Resumes the times
	// the push regained a lost link and went on.
	Retries int           `json:"retries"`
	Resumes int           `json:"resumes"`
	Elapsed time.Duration `json:"elapsed_ns"`
}

// BytesPerSecond is the push's average speed (0 when no time passed).
func (t TransferStats) BytesPerSecond() float64 {
	if t.Elapsed <= 0 {
		return 0
	}
	return float64(t.Bytes) / t.Elapsed.Seconds()
}

// Report is the whole account of one Updater run: what the device ran
// before and runs after, the verdict with its stable reason code and a
// sentence, and how long each phase took. Everything otactl prints about an
// update (text, JSON document, exit code) is derived from it.
type Report struct {
	// Device is the device's address, credentials redacted.
	Device string `json:"device"`
	// Source says how the bundle reached the device.
	Source Source `json:"source"`

	// Result is the verdict; Reason its stable code (ReasonOK on success);
	// Message one sentence saying what happened and why otactl thinks so.
	Result  Result `json:"result"`
	Reason  Reason `json:"reason"`
	Message string `json:"message,omitempty"`
	// Err is nil on success, else the error with its whole chain
	// (errors.Is and errors.As work on it; its text is what the CLI prints
	// after "Error:"). Its exit code is Reason.ExitCode().
	Err error `json:"-"`
	// Observed is true when the verdict was read from the device after
	// the update (it rebooted, or was seen not to): the CLI shows such a
	// failure as a labelled verdict on stdout (ROLLED BACK: …), not as an
	// error.
	Observed bool `json:"-"`
	// Sent is true once the pre-checks passed and the update may have
	// reached the device.
	Sent bool `json:"sent"`

	// Attempted is the firmware the update tried to install: the bundle's
	// manifest, or for a URL the firmware that booted from it.
	Attempted *Firmware `json:"attempted,omitempty"`
	// Before is what the device reported before the update (nil if it
	// could not be read).
	Before *Observation `json:"before,omitempty"`
	// After is the boot state read last: what boots next; nil if not read
	// after the update.
	After *BootState `json:"after,omitempty"`
	// Running is the firmware that runs at the end, as far as known, and
	// RunningInfo the Sys.GetInfo it was read from (nil when otactl knows
	// the firmware without having read it again, e.g. after a fallback).
	Running     Firmware `json:"running"`
	RunningInfo *SysInfo `json:"running_info,omitempty"`
	// Committed is true when the running firmware is committed.
	Committed bool `json:"committed"`
	// CommitDeadline is when a firmware left on trial falls back unless
	// committed (zero otherwise).
	CommitDeadline time.Time `json:"commit_deadline,omitzero"`
	// HealthChecks counts the calls of the health method.
	HealthChecks int `json:"health_checks,omitempty"`
	// Transfer describes a push.
	Transfer *TransferStats `json:"transfer,omitempty"`

	// Started is when the run began; Elapsed how long it took; Phases how
	// long each phase took, in order.
	Started time.Time     `json:"started"`
	Elapsed time.Duration `json:"elapsed_ns"`
	Phases  []PhaseTime   `json:"phases,omitempty"`
}

// OK reports whether the update did what was asked.
func (r *Report) OK() bool { return r.Err == nil }

// ExitCode is the exit code otactl ends with for this report.
func (r *Report) ExitCode() int { return r.Reason.ExitCode() }

// PhaseDuration is the time spent in phase p (0 if the run never reached
// it).
func (r *Report) PhaseDuration(p Phase) time.Duration {
	var d time.Duration
	for _, pt := range r.Phases {
		if pt.Phase == p {
			d += pt.Duration
		}
	}
	return d
}
