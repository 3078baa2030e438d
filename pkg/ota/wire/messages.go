package wire

import (
	"fmt"
	"strconv"
	"strings"
)

// Error codes a device answers with (the "code" of a reply's error object).
// Any code other than 0 is a failure; code 0 with a message is success (old
// firmware answers OTA.Update that way: MsgApplied).
const (
	// CodeFailed is the OTA service's general failure: a refused or failed
	// update (with its status message), OTA.Commit or OTA.Revert on a
	// committed firmware (no message), a refused snapshot.
	CodeFailed = -1
	// CodeNoField: OTA.SetBootState named no field.
	CodeNoField = -2
	// CodeBadSlot: OTA.SetBootState (or a snapshot's set_as_revert) named a
	// slot the device does not have, or could not save the boot state;
	// nothing changed.
	CodeBadSlot = -3
	// CodeCommitTimeoutWrite: saving a new commit timeout failed.
	CodeCommitTimeoutWrite = -4
	// CodeBadArgument: an argument the device cannot use (Sys.Reboot's
	// negative delay_ms).
	CodeBadArgument = 400
	// CodeShuttingDown is the answer to every call between the moment a
	// reboot is scheduled (at most RebootLockout ahead) and the reboot:
	// message ShuttingDown.
	CodeShuttingDown = 418
)

// The device's fixed status and error messages. A newer firmware puts its
// code before the message of a failed update ("-1 Wrong platform"):
// StripCode removes it. The bundle parser's messages ("Malformed archive",
// "Digest mismatch", "Wrong platform", …) are pkg/ota/bundle's Err*
// values, shared by both ends the same way.
const (
	// MsgMalformed: OTA.Update without url, OTA.Write without offset or
	// data, or data that is not base64.
	MsgMalformed = "Malformed request"
	// MsgInitFailed: an update could not start: another one runs, the
	// running firmware is not committed, or (emulator) the next boot uses
	// the slot an update would write.
	MsgInitFailed = "Failed to init updater"
	// MsgApplied: the update finished; the device reboots into it. Old
	// firmware replies OTA.Update with it under code 0 (success).
	MsgApplied = "Update applied, finalizing"
	// MsgNotModified: the download server answered 304; nothing changes
	// and the device does not reboot (code 0).
	MsgNotModified = "Not Modified"
	// MsgAlreadyRunning and MsgNotCommitted are what the device logs (and
	// newer firmware may reply) when it refuses to start an update.
	MsgAlreadyRunning = "Update already in progress"
	MsgNotCommitted   = "Previous update has not been committed yet"
	// MsgTimedOut: the update watchdog ended the update.
	MsgTimedOut = "Update timed out"
	// MsgInterrupted: the device rebooted in the middle of the update
	// (emulator; OTA.Status after such a reboot shows idle on a device).
	MsgInterrupted = "Update interrupted by reboot"
	// MsgDownloadFailed: the download failed (connection closed early, the
	// server unreachable).
	MsgDownloadFailed = "Update failed"
	// MsgNotStarted: OTA.Write or OTA.End while no push runs.
	MsgNotStarted = "Update not started"
	// MsgInvalidURL: OTA.Update's url cannot be fetched at all.
	MsgInvalidURL = "Invalid URL"
	// MsgSnapUncommitted and MsgSnapFailed: OTA.CreateSnapshot refused.
	MsgSnapUncommitted = "Cannot create snapshots in uncommitted state"
	MsgSnapFailed      = "Failed to create snapshot"
	// MsgSetBootFailed and MsgSetCommitTimeoutFailed: a snapshot's
	// set_as_revert could not be saved.
	MsgSetBootFailed          = "Failed to set boot state"
	MsgSetCommitTimeoutFailed = "Failed to set commit timeout"
	// MsgCommitTimeoutExpired is what the device logs when its commit
	// timer reverts an uncommitted firmware.
	MsgCommitTimeoutExpired = "Update commit timeout expired"
	// MsgInvalidDelay: Sys.Reboot with a negative delay_ms (CodeBadArgument).
	MsgInvalidDelay = "invalid delay value"

	// Messages of real firmware the emulator never sends, which otactl
	// still reads (Reason).
	MsgInvalidContentLength = "Invalid content-length"
	MsgFailedToConnect      = "Failed to connect"
	MsgNotAllData           = "Not all data was processed"
	MsgPrematureEnd         = "Premature end of update"
	MsgInvalidPart          = "Invalid part"

	// Emulator-only failures of its flash (docs/emulator.md).
	MsgPowerCut        = "Power cut"
	MsgCannotSave      = "Cannot save update status"
	MsgEraseFailed     = "Failed to erase slot"
	MsgWritePartFailed = "Failed to write part"
	MsgReadBackFailed  = "Failed to read back part"
	MsgManifestFailed  = "Failed to write manifest"
)

// Messages carrying a value, each with one function that formats it and
// one that parses it.
const (
	wrongOffsetPrefix  = "Wrong offset "
	shuttingDownPrefix = "shutting down in "
	httpCodePrefix     = "Invalid HTTP response code "
)

// WrongOffset is the device's refusal of an OTA.Write at offset got when
// it expects expected: "Wrong offset 0, expected 2652".
func WrongOffset(got, expected int64) string {
	return fmt.Sprintf("%s%d, expected %d", wrongOffsetPrefix, got, expected)
}

// ParseWrongOffset reads the offset a refusal of an OTA.Write names as the
// one the device expects, from WrongOffset's message (a code prefix, as
// newer firmware puts it, is skipped). It reads leniently: any message
// that says "expected" followed, within three characters, by a number is
// taken, so that firmware wording it differently is still understood; got
// is -1 when the message does not say which offset was refused.
func ParseWrongOffset(msg string) (got, expected int64, ok bool) {
	m := StripCode(msg)
	got = -1
	if rest, found := cutPrefixFold(m, wrongOffsetPrefix); found {
		if n, _, ok := leadingInt(rest); ok {
			got = n
		}
	}
	i := strings.Index(strings.ToLower(m), "expected")
	if i < 0 {
		return -1, 0, false
	}
	rest := m[i+len("expected"):]
	for skip := 0; skip <= 3 && rest != ""; skip++ {
		if rest[0] >= '0' && rest[0] <= '9' {
			n, _, ok := leadingInt(rest)
			return got, n, ok
		}
		rest = rest[1:]
	}
	return -1, 0, false
}

// ShuttingDown is the message of CodeShuttingDown: the device reboots in
// ms milliseconds ("shutting down in 80 ms").
func ShuttingDown(ms int64) string {
	return fmt.Sprintf("%s%d ms", shuttingDownPrefix, max(ms, 0))
}

// ParseShuttingDown reads the milliseconds left from ShuttingDown's
// message.
func ParseShuttingDown(msg string) (ms int64, ok bool) {
	rest, found := cutPrefixFold(StripCode(msg), shuttingDownPrefix)
	if !found {
		return 0, false
	}
	n, tail, ok := leadingInt(rest)
	if !ok || strings.TrimSpace(tail) != "ms" {
		return 0, false
	}
	return n, true
}

// InvalidHTTPResponse is the status message of a download answered with
// HTTP status code (other than 200 and 304).
func InvalidHTTPResponse(code int) string {
	return fmt.Sprintf("%s%d", httpCodePrefix, code)
}

// ParseInvalidHTTPResponse reads the HTTP status from InvalidHTTPResponse's
// message.
func ParseInvalidHTTPResponse(msg string) (code int, ok bool) {
	rest, found := cutPrefixFold(StripCode(msg), httpCodePrefix)
	if !found {
		return 0, false
	}
	n, tail, ok := leadingInt(rest)
	if !ok || strings.TrimSpace(tail) != "" {
		return 0, false
	}
	return int(n), true
}

// IsInvalidHTTPResponse reports whether msg is InvalidHTTPResponse's
// message, whatever follows its words.
func IsInvalidHTTPResponse(msg string) bool {
	return HasMessage(msg, strings.TrimSpace(httpCodePrefix))
}

// NextBootBusy is what the emulator logs when it refuses an update or a
// snapshot because the next boot uses the slot it would write.
func NextBootBusy(slot int, what string) string {
	return fmt.Sprintf("The next boot uses slot %d, the slot %s would write: reboot first", slot, what)
}

// ArmingCommitWatchdog is what the device logs on a first boot with a
// commit timeout.
func ArmingCommitWatchdog(seconds int) string {
	return fmt.Sprintf("Arming commit watchdog for %d seconds", seconds)
}

// StripCode removes the "<code> " that newer firmware puts before the
// status message of a failed update ("-1 Wrong platform"), and surrounding
// space.
func StripCode(msg string) string {
	m := strings.TrimSpace(msg)
	i := 0
	if i < len(m) && m[i] == '-' {
		i++
	}
	j := i
	for j < len(m) && m[j] >= '0' && m[j] <= '9' {
		j++
	}
	if j == i || j == len(m) || (m[j] != ' ' && m[j] != '\t') {
		return m
	}
	return strings.TrimSpace(m[j:])
}

// HasMessage reports whether msg (a reply's error message or OTA.Status
// "msg") is the fixed message want, or starts with it, ignoring case and a
// code prefix: devices append details ("Update failed: …").
func HasMessage(msg, want string) bool {
	_, ok := cutPrefixFold(StripCode(msg), want)
	return ok
}

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || !strings.EqualFold(s[:len(prefix)], prefix) {
		return s, false
	}
	return s[len(prefix):], true
}

// leadingInt reads the decimal number at the start of s (an optional '-'
// then digits) and returns the rest.
func leadingInt(s string) (int64, string, bool) {
	i := 0
	if i < len(s) && s[i] == '-' {
		i++
	}
	j := i
	for j < len(s) && s[j] >= '0' && s[j] <= '9' {
		j++
	}
	if j == i {
		return 0, s, false
	}
	n, err := strconv.ParseInt(s[:j], 10, 64)
	return n, s[j:], err == nil
}
