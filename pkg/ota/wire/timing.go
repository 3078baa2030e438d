package wire

import "time"

// Timing facts of a device (docs/protocol.md, "Boot, commit and revert").
const (
	// RebootLockout is the pre-reboot window: a call that arrives when the
	// scheduled reboot is this close or closer gets CodeShuttingDown
	// instead of an answer (rpc-common's MGOS_RPC_REBOOT_LOCKOUT_MS).
	RebootLockout = 100 * time.Millisecond
	// RebootAfter is how long after replying OTA.Update, OTA.End,
	// OTA.Revert or Sys.Reboot (without delay_ms) a device reboots.
	RebootAfter = 100 * time.Millisecond
	// DefaultUpdateTimeout is the update watchdog of a device given none.
	DefaultUpdateTimeout = 600 * time.Second
	// MaxTimeoutSeconds is the longest commit timeout or update watchdog a
	// device can hold: it keeps both as a signed 32-bit number of seconds
	// and arms its timers with that number times 1000 as a signed 32-bit
	// number of milliseconds, so anything above wraps, to a negative or
	// zero timer (and a commit timeout of 0 or less commits at boot).
	MaxTimeoutSeconds = 2147483
)
