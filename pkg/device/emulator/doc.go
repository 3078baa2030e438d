// Package emulator is an emulated Mongoose OS device: the OTA slot state
// machine of docs/protocol.md, served on every transport otactl
// speaks, with its flash kept on disk so that killing the process is a
// power cut and starting it again is a boot.
//
// # Model
//
// The flash lives in Config.StateDir:
//
//	bootstate.json         {active_slot, is_committed, revert_slot, commit_timeout}
//	slot<N>/manifest.json  the manifest of the firmware in slot N (absent: empty slot)
//	slot<N>/parts/<name>   the data of each part, as an opaque file
//	slot<N>/fs/            the slot's filesystem (parts of type "file" land here)
//
// A new state dir gets a factory firmware (version Config.FactoryVersion,
// build_id "factory") in slot 0, committed. Every write to the boot state
// goes to a temporary file that is fsynced, renamed over the old one, and
// the directory fsynced, so a power cut at any instant leaves the old or
// the new state. File data reaches the flash one page (PageSize) at a
// time. Every flash write of the running device (not the factory image)
// passes Hooks.FlashWrite first; returning ErrPowerCut from it (see
// PowerCutAt) cuts the power at that write, ErrTornWrite in the middle of
// it. An update or a snapshot never writes the slot the next boot uses.
//
// The running firmware's identity (Sys.GetInfo app, fw_version, fw_id)
// comes from the manifest of the slot it booted.
//
// # Boot
//
// A boot reads the persisted boot state and runs the firmware of
// active_slot. If that state is uncommitted, this is the first boot after
// an update (or after OTA.CreateSnapshot with set_as_revert, or an
// OTA.SetBootState that uncommitted): the device first persists a
// "tombstone" pointing back at revert_slot, committed, while it keeps
// reporting {active, revert, uncommitted} in memory; so any reboot, crash or
// power cut before OTA.Commit lands on the old firmware. It then copies
// files of the old slot's filesystem that the new one lacks (existing files
// are never overwritten) and either arms the commit timer (commit_timeout >
// 0 seconds, on Config.Clock) or commits at once (0). Timer expiry or
// OTA.Revert go back to revert_slot, committed, and reboot.
//
// A reboot (Sys.Reboot, after an update, a revert, a commit timeout) takes
// the device off every transport: listeners are stopped (HTTP and WebSocket
// connections close, the serial pty stays but the device stops reading it
// and what the host sends is dropped, the MQTT client disconnects; an
// embedded broker stays up), for
// Config.RebootDelay on Config.Clock (State.OffUntil), then the device boots
// and starts them again. The
// replies that precede a reboot are sent Config.RebootAfter (100 ms, on
// Config.Clock) before it; in the last RebootLockout (100 ms) of that wait
// every known method is answered with error 418 "shutting down in N ms",
// as rpc-common does on a device. Such a reboot never goes before the
// reply it follows has been written to the link (ReplyWaitLimit at most;
// docs/emulator.md, "Reboots").
//
// # Updates
//
// OTA.Update downloads its url (redirects followed up to
// Config.MaxRedirects, non-200 is an error, HTTPS verified against
// Config.CAFile), OTA.Begin/Write/End receive the bundle in chunks (each
// Write's offset must be the next expected byte; data is standard base64;
// writes that arrive ahead of a gap wait for it, so a client may keep
// several in flight; OTA.Status reports the expected "offset", an emulator
// extension; an interrupted push lives on until its watchdog: see
// docs/emulator.md, "Pushing a bundle").
// Either way the bundle is parsed as a stream by pkg/ota/bundle, in
// constant memory: manifest.json first, stored entries only, CRC-32 of each
// entry, platform check (case-insensitive prefix), each part named by the
// manifest written to the spare slot, read back and checked against size,
// cs_sha1 and cs_sha256. A part src or part name with a path separator or
// ".." is refused, and so is a data descriptor after manifest.json or a
// written part (a device's parser cannot skip it there). A watchdog (the
// timeout argument, default 600 s, on Config.Clock) bounds the whole
// update, from OTA.Update or OTA.Begin to its end, however steadily bytes
// arrive (a real device since 2018 re-arms it on progress; see
// docs/emulator.md, "The update watchdog"). On success the
// boot state becomes {active: new, revert: old, uncommitted}, the reply is
// code 0 "Update applied, finalizing", and the device reboots; on failure
// the reply carries the device's status message and the boot state is
// untouched.
//
// # Firmware behaviour
//
// A bundle says how its firmware behaves when booted with the top-level
// manifest attribute "emulator_behavior" (BehaviorAttribute):
//
//	"ok"             boots and answers RPC (the default, also for unknown values)
//	"crash_on_boot"  crashes during init: on its first boot the device reverts
//	                 to the previous firmware at once (a committed firmware that
//	                 crashes leaves the device off: State().Bricked)
//	"no_rpc"         boots but never answers RPC: only the commit timer brings
//	                 the previous firmware back (with commit_timeout 0 it commits
//	                 itself, as a real one would)
//
// CI scripts build a "bad firmware" bundle with this attribute to test
// their rollback paths.
//
// Every firmware also has a health method (the one `otactl update
// --health-method` calls): named by the attribute "emulator_health_method"
// (HealthMethodAttribute, default "App.Health"; a method the device has
// already is refused), answering as "emulator_health" (HealthAttribute)
// says: "ok" (default), "fail" (error 500), "late:N" (error 503 for the
// first N seconds after boot) or "hang" (no answer).
//
// # Many devices
//
// A Host runs many devices in one process (`otactl emulator --count N`):
// it owns the transports they share — one HTTP listener that serves device
// id at /<id>/rpc, one embedded MQTT broker (or the URL of another) — and
// devices attach to it with AddDevice, each with its own flash, timers,
// firmware and MQTT client connection. A device's reboot detaches only its
// own route (its connections in flight close) and its own broker
// connection; the listener and the broker stay up for the others.
// HostConfig.FailRate gives a share of them Config.CrashOnNewFirmware,
// picked by FailsNewFirmware(seed, id, rate). See docs/emulator.md, "Many
// devices in one process".
//
// # Library use
//
//	d, err := emulator.New(emulator.Config{StateDir: dir, Listen: "127.0.0.1:0", Clock: clk})
//	err = d.Start(ctx)
//	for _, l := range d.Listeners() { fmt.Println(l.Transport, l.Addr) }
//	defer d.Close()
//
// Tests can serve d.Handler() on any transport (pkg/transport/pipe for an
// in-process client), drive commit timers and watchdogs with a
// ManualClock, watch d.State(), and cut the power with d.PowerCut() or a
// Hooks.FlashWrite hook; a new Device on the same StateDir powers it on
// again.
package emulator
