package ota

// EventKind says what an Event reports.
type EventKind string

// Event kinds, in the order a push or an update meets them.
const (
	// EventBegin: a push is starting (Total bytes; Msg gives the chunk size).
	EventBegin EventKind = "begin"
	// EventRetry: a write failed and is retried at the same offset (Sent is
	// the offset, Attempt the attempt about to be made, Err why).
	EventRetry EventKind = "retry"
	// EventReconnecting: the link was lost during a push (or the device
	// does not answer); otactl is regaining it (Sent is the offset the
	// device confirmed, Attempt the attempt, Err the last error).
	EventReconnecting EventKind = "reconnecting"
	// EventResumed: the link is back and the device still runs the update:
	// the push goes on at Sent.
	EventResumed EventKind = "resumed"
	// EventAbort: the push failed; OTA.End is sent to abort it (Err why),
	// or the device no longer runs the update.
	EventAbort EventKind = "abort"
	// EventFinalizing: all data was sent; the device verifies the bundle
	// (OTA.End).
	EventFinalizing EventKind = "finalizing"
	// EventDownload: OTA.Update progress from OTA.Status (Percent, never
	// 100 before the device replied).
	EventDownload EventKind = "download"
	// EventAccepted: the device accepted the update and reboots.
	EventAccepted EventKind = "accepted"
	// EventNoReply: the reply to OTA.End or OTA.Update did not come (Err);
	// the device is probably rebooting. WaitOutcome tells what happened.
	EventNoReply EventKind = "no_reply"
	// EventWaiting: the device did not answer yet (Attempt, Err).
	EventWaiting EventKind = "waiting"
	// EventNotRebooted: the device answers but still runs the old instance
	// (Info, Boot).
	EventNotRebooted EventKind = "not_rebooted"
	// EventBack: the device answers after its reboot (Info, Boot).
	EventBack EventKind = "back"
	// EventHealthCheck: the health-check method is being called.
	EventHealthCheck EventKind = "health_check"
	// EventCommitted: OTA.Commit succeeded and the boot state confirms it.
	EventCommitted EventKind = "committed"

	// Events of an Updater's run (each also carries its Phase).

	// EventPhase: a phase starts (Phase).
	EventPhase EventKind = "phase"
	// EventNote: a step worth telling (Msg), e.g. "serving FILE at URL",
	// "waiting for the device to reboot".
	EventNote EventKind = "note"
	// EventWarning: something the user asked for that may not work (Msg),
	// e.g. a chunk size above the device's frame limit.
	EventWarning EventKind = "warning"
	// EventServed: bytes of a served bundle the device fetched (Sent of
	// Total; the last byte only once the device replied).
	EventServed EventKind = "served"
	// EventSent: bytes of a push the device confirmed (Sent of Total).
	EventSent EventKind = "sent"
	// EventTransferred: a push is complete (Transfer; Msg says it in
	// words).
	EventTransferred EventKind = "transferred"
)

// Event is a step of a push, an update or a wait, for the CLI to show (as a
// progress bar or a sentence). Only the fields its Kind names are set.
// Callbacks get events one at a time (never concurrently) and should return
// quickly: the operation waits for them.
type Event struct {
	Kind EventKind
	// Phase is the phase of an Updater's run the event belongs to (empty
	// outside a run).
	Phase Phase
	// Msg is a short human sentence describing the event.
	Msg string
	// Sent and Total are bytes (push).
	Sent, Total int64
	// Percent is the device's download progress (update by URL).
	Percent int
	// Attempt counts tries (retries) or connection attempts, from 1.
	Attempt int
	// Err is the error that caused a retry, an abort or a wait.
	Err error
	// Info and Boot are what the device reported, when it did.
	Info *SysInfo
	Boot *BootState
	// Transfer describes a completed push (EventTransferred).
	Transfer *TransferStats
}
