package wire

import (
	"encoding/json"
	"fmt"
	"strings"
)

// BootState is the device's boot configuration: the reply of
// OTA.GetBootState, and what the emulator keeps on its flash. Fields in the
// order a device prints them.
type BootState struct {
	// ActiveSlot is the slot that boots next (and, after a reboot, runs).
	ActiveSlot int `json:"active_slot"`
	// IsCommitted is false while a new firmware is on trial.
	IsCommitted bool `json:"is_committed"`
	// RevertSlot is the slot the device falls back to if the active one is
	// not committed in time.
	RevertSlot int `json:"revert_slot"`
	// CommitTimeout is the trial period in seconds (0: commit at boot).
	CommitTimeout int `json:"commit_timeout"`
}

// SetBootStateArgs are the arguments of OTA.SetBootState: only the non-nil
// fields are sent, and the device keeps the others.
type SetBootStateArgs struct {
	ActiveSlot    *int  `json:"active_slot,omitempty"`
	RevertSlot    *int  `json:"revert_slot,omitempty"`
	IsCommitted   *bool `json:"is_committed,omitempty"`
	CommitTimeout *int  `json:"commit_timeout,omitempty"`
}

// Empty reports whether no field is set (the device refuses that with
// CodeNoField).
func (c SetBootStateArgs) Empty() bool {
	return c.ActiveSlot == nil && c.RevertSlot == nil && c.IsCommitted == nil && c.CommitTimeout == nil
}

// UpdateArgs are the arguments of OTA.Update.
type UpdateArgs struct {
	// URL is where the device downloads the bundle (http, https).
	URL string `json:"url"`
	// CommitTimeout is the trial period of the new firmware, in seconds
	// (0: it commits itself at boot).
	CommitTimeout int64 `json:"commit_timeout"`
	// Timeout is the update watchdog in seconds (0: the device's default,
	// 600).
	Timeout int64 `json:"timeout"`
}

// BeginArgs are the arguments of OTA.Begin.
type BeginArgs struct {
	Timeout       int64 `json:"timeout"`
	CommitTimeout int64 `json:"commit_timeout"`
	// Size is the bundle's size in bytes (progress is counted against it).
	Size int64 `json:"size"`
}

// WriteArgs are the arguments of OTA.Write: Data (standard base64) holds
// the bundle's bytes from Offset on.
type WriteArgs struct {
	Offset int64  `json:"offset"`
	Data   string `json:"data"`
}

// CreateSnapshotArgs are the arguments of OTA.CreateSnapshot.
type CreateSnapshotArgs struct {
	// SetAsRevert makes the running firmware uncommitted with the snapshot
	// as its fallback.
	SetAsRevert bool `json:"set_as_revert"`
	// CommitTimeout, with SetAsRevert, sets the trial period (seconds);
	// nil keeps the device's.
	CommitTimeout *int `json:"commit_timeout,omitempty"`
}

// SnapshotReply is the result of OTA.CreateSnapshot: the slot written.
type SnapshotReply struct {
	Slot int `json:"slot"`
}

// RebootArgs are the arguments of Sys.Reboot.
type RebootArgs struct {
	DelayMS int64 `json:"delay_ms"`
}

// State is the updater state of OTA.Status.
type State int

// Updater states (OTA.Status "state").
const (
	StateIdle     State = 0 // no update running
	StateProgress State = 1 // an update is running
	StateError    State = 2 // the last update failed (a new one may start)
	StateSuccess  State = 3 // an update finished; the device is about to reboot
)

// String names the state in words, for people.
func (s State) String() string {
	switch s {
	case StateIdle:
		return "idle"
	case StateProgress:
		return "update in progress"
	case StateError:
		return "last update failed"
	case StateSuccess:
		return "update finished, reboot pending"
	}
	return fmt.Sprintf("state %d", int(s))
}

// Word is the OTA.Status "msg" a device sends for the state when it has no
// message of its own: "idle", "progress", "error", "success".
func (s State) Word() string {
	switch s {
	case StateIdle:
		return "idle"
	case StateProgress:
		return "progress"
	case StateError:
		return "error"
	case StateSuccess:
		return "success"
	}
	return ""
}

// IsStateWord reports whether an OTA.Status message only names the state
// (State.Word of some state, in any case).
func IsStateWord(msg string) bool {
	msg = strings.TrimSpace(msg)
	for s := StateIdle; s <= StateSuccess; s++ {
		if strings.EqualFold(msg, s.Word()) {
			return true
		}
	}
	return false
}

// Status is the result of OTA.Status. Devices always send State; newer
// firmware sends the other fields too. Fields in the order the emulator
// sends them (sorted by name).
type Status struct {
	CommitTimeout int  `json:"commit_timeout"`
	IsCommitted   bool `json:"is_committed"`
	// Msg is the device's message: the reason of a failed update, or the
	// state's word (State.Word).
	Msg string `json:"msg"`
	// Offset is where the next OTA.Write of a running push must write:
	// the bytes the device holds. Real firmware does not report it; the
	// otactl emulator does (docs/protocol.md, "What the emulator adds").
	// Nil when absent.
	Offset *int64 `json:"offset,omitempty"`
	// Partition is the active slot.
	Partition       int   `json:"partition"`
	ProgressPercent int   `json:"progress_percent"`
	State           State `json:"state"`
	// Raw is the whole result as the device sent it (set by ParseStatus).
	Raw json.RawMessage `json:"-"`
}

// SysInfo is the result of Sys.GetInfo: the fields otactl reads, and the
// ones the emulator sends. Fields in the order the emulator sends them
// (sorted by name). Old firmware sends fewer.
type SysInfo struct {
	App  string `json:"app"`
	Arch string `json:"arch"`
	// Emulator is true on otactl's emulator; real firmware never sends it.
	Emulator bool `json:"emulator,omitempty"`
	// FWID is the build id (the bundle manifest's build_id).
	FWID        string `json:"fw_id"`
	FWTimestamp string `json:"fw_timestamp"`
	FWVersion   string `json:"fw_version"`
	ID          string `json:"id"`
	Mac         string `json:"mac,omitempty"`
	// RunningSlot is the slot the running firmware was booted from
	// (RunningSlotField). Mongoose OS firmware does not report it; the
	// emulator does. Nil when absent.
	RunningSlot *int `json:"ota_slot,omitempty"`
	RAMFree     int  `json:"ram_free,omitempty"`
	RAMSize     int  `json:"ram_size,omitempty"`
	// Uptime is in seconds; zero when the device did not say.
	Uptime float64 `json:"uptime"`
	// Raw is the whole result as the device sent it (set by ParseSysInfo).
	Raw json.RawMessage `json:"-"`
}

// RunningSlotField is the Sys.GetInfo field that names the slot the
// running firmware was booted from. Without it, the running slot is known
// only while the boot state cannot have changed since boot.
const RunningSlotField = "ota_slot"

// Firmware returns the identity of the running firmware.
func (i SysInfo) Firmware() Firmware { return Firmware{Version: i.FWVersion, BuildID: i.FWID} }

// Firmware identifies a firmware build: a bundle manifest's version and
// build_id, or Sys.GetInfo's fw_version and fw_id.
type Firmware struct {
	Version string `json:"version,omitempty"`
	BuildID string `json:"build_id,omitempty"`
}

// IsZero reports whether nothing is known.
func (f Firmware) IsZero() bool { return f.Version == "" && f.BuildID == "" }

// Matches reports whether running (from Sys.GetInfo) is the firmware f
// describes: every field of f that is set must be equal. A zero f matches
// nothing.
func (f Firmware) Matches(running Firmware) bool {
	if f.IsZero() {
		return false
	}
	return (f.Version == "" || f.Version == running.Version) && (f.BuildID == "" || f.BuildID == running.BuildID)
}

// String is "1.2 (build 2024...)" or whichever part is known.
func (f Firmware) String() string {
	switch {
	case f.Version != "" && f.BuildID != "":
		return f.Version + " (build " + f.BuildID + ")"
	case f.Version != "":
		return f.Version
	case f.BuildID != "":
		return "build " + f.BuildID
	}
	return "unknown firmware"
}
