package fleet

import (
	"encoding/json"
	"time"
)

// Outcome is where one device ended in a rollout (docs/fleet.md, "Outcomes").
type Outcome string

// Outcomes.
const (
	// UpdatedCommitted: the device runs the new firmware, committed.
	UpdatedCommitted Outcome = "updated-committed"
	// UpdatedUncommitted: the device runs the new firmware on trial: it
	// falls back at its commit timeout unless committed.
	UpdatedUncommitted Outcome = "updated-uncommitted"
	// RolledBack: the device installed the new firmware and came back on
	// the old one.
	RolledBack Outcome = "rolled-back"
	// NotApplied: the device did not switch (it refused or failed the
	// update, or did not reboot); it runs its old firmware.
	NotApplied Outcome = "not-applied"
	// Unreachable: the device could not be reached, or stopped answering
	// so that otactl cannot tell what it runs.
	Unreachable Outcome = "unreachable"
	// Skipped: the device already runs the bundle's build (same build_id);
	// nothing was sent.
	Skipped Outcome = "skipped"
	// NotStarted: the rollout stopped (failure threshold, failed canary,
	// Ctrl-C) before this device's turn.
	NotStarted Outcome = "not-started"
)

// Outcomes lists every outcome in the order summaries show them.
var Outcomes = []Outcome{UpdatedCommitted, UpdatedUncommitted, Skipped, RolledBack, NotApplied, Unreachable, NotStarted}

// Ok reports whether a device with this outcome ended well: it runs the
// bundle's firmware, committed when commit is true (skipped: it already
// did). A device that ended well is not retried from a journal.
func (o Outcome) Ok(commit bool) bool {
	switch o {
	case UpdatedCommitted, Skipped:
		return true
	case UpdatedUncommitted:
		return !commit
	}
	return false
}

// Failed reports whether the outcome counts against the failure threshold
// (--max-failures): every device that was started and did not end well.
func (o Outcome) Failed(commit bool) bool {
	return o != NotStarted && !o.Ok(commit)
}

// Result is what a Runner reports for one device.
type Result struct {
	Outcome Outcome `json:"outcome"`
	// Reason is the device's stable reason code (pkg/ota Reason: "ok",
	// "rolled_back", "unreachable", …); Message one sentence.
	Reason  string `json:"reason"`
	Message string `json:"message,omitempty"`
	// ExitCode is what `otactl update` would have ended with for this
	// device alone.
	ExitCode int `json:"exit_code"`
	// FromVersion/FromBuild: the firmware before; Version/BuildID after.
	FromVersion string `json:"from_version,omitempty"`
	FromBuild   string `json:"from_build_id,omitempty"`
	Version     string `json:"version,omitempty"`
	BuildID     string `json:"build_id,omitempty"`
	// Report is the device's whole update report (the JSON document of
	// `otactl update --json`), when there is one.
	Report json.RawMessage `json:"report,omitempty"`
}

// Record is one device's line in the summary, the --json document and the
// journal.
type Record struct {
	// Device is the short name shown in tables; Address the device's
	// address with any password hidden.
	Device  string `json:"device"`
	Address string `json:"address"`
	Result
	// Started and Finished are zero for a device not started (and for one
	// carried over from a journal, they are that run's).
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
	// Canary is true for a device of the canary group.
	Canary bool `json:"canary,omitempty"`
	// Batch is the batch the device ran in (0: the canary group; 1, 2, …).
	Batch int `json:"batch"`
	// FromJournal is true when the outcome was read from the journal of an
	// earlier run (the device ended well then and was not run again).
	FromJournal bool `json:"from_journal,omitempty"`
}

// Duration is how long the device took.
func (r *Record) Duration() time.Duration {
	if r.Started.IsZero() || r.Finished.IsZero() {
		return 0
	}
	return r.Finished.Sub(r.Started)
}
