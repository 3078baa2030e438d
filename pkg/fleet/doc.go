// Package fleet runs one update over many devices: the rollout of `otactl
// fleet update` (docs/fleet.md). It decides which device starts when — a
// canary group first, then batches, at most Parallel in flight, no faster
// than MaxPerMinute, stopping at the failure threshold — records each
// device's outcome in a journal as it finishes. What happens to one device
// is the Runner's business (an ota.Updater, behind an adapter in pkg/cli,
// with the bundle served to every device by one ota.BundleServer); this
// package never talks to a device itself.
//
// Nothing here prints: the rollout reports to an Observer, and the CLI
// renders.
package fleet
