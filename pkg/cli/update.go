package cli

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/spf13/cobra"

	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/rpc"
)

// UpdateOptions are the inputs shared by `otactl update` and `otactl push`.
type UpdateOptions struct {
	F             *Factory
	URL           string
	File          string
	CommitTimeout commitTimeoutValue
	UpdateTimeout time.Duration
	Commit        bool
	NoWait        bool
	HealthMethod  string
	HealthGrace   time.Duration
	OnHealthFail  string
	ServeAddr     string
	Force         bool
	ChunkSize     int
	Sig           sigCheckFlags // --pubkey, --sig-req-mask (signature.go)
	Window        int

	// bundle, when set (otactl fleet update), is the --file bundle opened
	// and checked once for the whole rollout, signatures included.
	bundle *ota.LocalBundle
}

// What --on-health-fail takes.
const (
	healthFailRevert = "revert"
	healthFailWait   = "wait"
)

func addOutcomeFlags(cmd *cobra.Command, o *UpdateOptions) {
	fl := cmd.Flags()
	fl.Var(&o.CommitTimeout, "commit-timeout", "seconds the new firmware waits for 'otactl commit' before the device rolls back, up to 2147483 (0 = commit at boot, needs --force)")
	o.UpdateTimeout = ota.DefaultUpdateTimeout
	fl.Var(secondsFlag{d: &o.UpdateTimeout, max: ota.MaxTimeout, rangeText: updateRange}, "update-timeout", "device watchdog: abort the update if it makes no progress for this long (seconds, or 10m)")
	fl.BoolVar(&o.Commit, "commit", false, "commit once the new firmware answers (after --health-method, if given)")
	fl.BoolVar(&o.NoWait, "no-wait", false, "return when the device accepted the bundle, like mos, without waiting for the reboot")
	fl.StringVar(&o.HealthMethod, "health-method", "", "with --commit: RPC method the new firmware must answer without error before it is committed")
	o.HealthGrace = ota.DefaultHealthGrace
	fl.Var(secondsFlag{d: &o.HealthGrace, max: ota.MaxTimeout, rangeText: "must be from 1s to 2147483s"}, "health-grace", "how long --health-method may fail or stay silent (retried) before the firmware counts as unhealthy")
	fl.StringVar(&o.OnHealthFail, "on-health-fail", healthFailRevert, "when the health check fails: 'revert' (OTA.Revert at once) or 'wait' (leave it uncommitted: it falls back at its commit timeout)")
	fl.BoolVar(&o.Force, "force", false, "allow --commit-timeout 0 (the new firmware commits itself at boot: no rollback), and send a bundle whose platform differs from the device's")
	o.Sig.add(fl)
}

// updateRange names the update watchdogs a device can hold.
var updateRange = fmt.Sprintf("must be from 1 to %d seconds (about 24 days: the device arms its watchdog in milliseconds in a signed 32-bit number)", ota.MaxTimeoutSeconds)

func (o *UpdateOptions) check() error {
	autoCommit := o.CommitTimeout.set && o.CommitTimeout.d == 0
	if autoCommit && !o.Force {
		return usageErrorf("--commit-timeout 0 makes the new firmware commit itself at boot, so a bad firmware cannot roll back; add --force if you mean it")
	}
	if o.HealthMethod != "" && !o.Commit {
		return usageErrorf("--health-method goes with --commit")
	}
	if o.NoWait && o.Commit {
		return usageErrorf("--commit needs to wait for the new firmware: drop --no-wait")
	}
	if o.UpdateTimeout < time.Second {
		return usageErrorf("--update-timeout %s", updateRange)
	}
	if o.OnHealthFail != healthFailRevert && o.OnHealthFail != healthFailWait {
		return usageErrorf("--on-health-fail takes 'revert' or 'wait', not %q", o.OnHealthFail)
	}
	if o.HealthMethod != "" {
		if autoCommit {
			return usageErrorf("--health-method cannot gate a firmware that commits itself at boot (--commit-timeout 0): give a commit timeout")
		}
		if o.HealthGrace < time.Second {
			return usageErrorf("--health-grace must be at least 1s")
		}
		if ct := time.Duration(o.CommitTimeout.seconds()) * time.Second; o.HealthGrace >= ct {
			return usageErrorf("--health-grace %s must be shorter than the commit timeout (%s), or the device falls back while otactl still checks its health", humanDuration(o.HealthGrace), humanDuration(ct))
		}
	}
	return nil
}

// NewCmdUpdate builds `otactl update`.
func NewCmdUpdate(f *Factory) *cobra.Command {
	o := &UpdateOptions{F: f}
	cmd := &cobra.Command{
		Use:   "update (FW.ZIP | --file FW.ZIP | --url URL) [--commit] [--commit-timeout S]",
		Short: "Update the device from a URL or a local bundle, and wait for the outcome",
		Long: `Update the device with OTA.Update: it downloads the bundle into its spare
slot, checks it, and reboots into it, uncommitted. otactl then waits until the
device answers again and tells what booted:

  - the new firmware, uncommitted: with --commit otactl commits it (after
    --health-method answered within --health-grace, if given; if it does not,
    otactl reverts at once, or with --on-health-fail wait leaves the device to
    fall back at its commit timeout); without, it says how long the device
    waits for 'otactl commit' before it rolls back by itself;
  - the old firmware: the update did not take (exit 6).

--file (or the bundle named alone: 'otactl update fw.zip', as with mos) serves
a local bundle to the device from a one-shot HTTP server on this machine
(--serve-addr, default: this machine's address on the route to the device,
any free port): one download, at an unguessable path, until the update is
decided. Over a serial --port without --serve-addr the bundle is pushed over
the link instead, as 'otactl push' does (one line on stderr says so). --no-wait returns when the device accepted the bundle.
A --file bundle for another platform than the device's is refused before
anything is sent (exit 6, reason wrong_platform) unless --force.`,
		Example: `  otactl --port http://192.168.4.1/rpc update --file fw.zip --commit
  otactl --port /dev/ttyUSB0 update fw.zip --commit
  otactl --port mqtt://broker/esp32_0A1B2C update --url https://fw.example.com/2.0.0/fw.zip --commit-timeout 600
  otactl update --file fw.zip --commit --health-method App.Health --health-grace 1m --json`,
		Args: bundleArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.positionalBundle(args); err != nil {
				return err
			}
			if (o.URL == "") == (o.File == "") {
				return usageErrorf("update needs exactly one of FW.ZIP, --file FW.ZIP or --url URL")
			}
			if err := o.check(); err != nil {
				return err
			}
			if o.pushesOverLink() {
				return o.runUpdateAsPush(cmd.Context())
			}
			f.updateDoc().Delivery = deliveryDownload
			return runUpdate(cmd.Context(), o)
		},
	}
	addOutcomeFlags(cmd, o)
	cmd.Flags().StringVar(&o.URL, "url", "", "bundle URL the device downloads (http or https)")
	cmd.Flags().StringVar(&o.File, "file", "", "local bundle to serve to the device")
	cmd.Flags().StringVar(&o.ServeAddr, "serve-addr", "", "with --file: HOST[:PORT] of this machine that the device can reach")
	addDeviceLogFlag(f, cmd)
	return cmd
}

func runUpdate(ctx context.Context, o *UpdateOptions) error {
	if o.File == "" {
		if u, err := url.Parse(o.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return usageErrorf("--url must be an http:// or https:// URL the device can reach")
		}
		if err := o.Sig.checkSignatures(o.URL, nil); err != nil {
			return err
		}
	}
	return o.run(ctx, false)
}

// run performs the update (push: over the RPC link) with an ota.Updater
// and renders its report.
func (o *UpdateOptions) run(ctx context.Context, push bool) error {
	f := o.F
	u := o.updater(push)
	if o.File != "" && u.Bundle == nil {
		b, err := ota.OpenBundle(o.File)
		if err != nil {
			return err
		}
		defer b.Close()
		if err := o.Sig.checkSignatures(o.File, b.Report); err != nil {
			return err
		}
		u.Bundle = b
	}
	label := "downloading"
	if push {
		label = "pushing"
	}
	bar := f.newProgressBar(label)
	u.OnEvent = f.updateEvents(bar, o.HealthMethod)
	rep := u.Run(ctx)
	bar.Done()
	return f.renderUpdate(rep)
}

// updater is the ota.Updater the flags describe, for the device of --port.
func (o *UpdateOptions) updater(push bool) ota.Updater {
	f := o.F
	u := ota.Updater{
		Dial: f.updaterDialer(), Address: f.G.Port,
		URL: o.URL, Push: push, ServeAddr: o.ServeAddr,
		CommitTimeout: o.CommitTimeout.otaValue(), UpdateTimeout: o.UpdateTimeout,
		Commit: o.Commit, NoWait: o.NoWait,
		Health:       ota.HealthOptions{Method: o.HealthMethod, Grace: o.HealthGrace, CallTimeout: min(f.G.Timeout, 5*time.Second)},
		OnHealthFail: ota.HealthFailAction(o.OnHealthFail),
		Force:        o.Force,
		Timeout:      f.G.Timeout, RebootTimeout: f.rebootTimeout(),
		ChunkSize: o.ChunkSize, Window: f.window(o.Window),
		Bundle: o.bundle,
	}
	if f.timeoutSet {
		// --timeout, when given, bounds each write of a push (else 20 s).
		u.WriteTimeout = f.G.Timeout
	}
	return u
}

// updaterDialer connects to the device for an ota.Updater; a failure
// carries the reason (and so the exit code) the CLI gives it.
func (f *Factory) updaterDialer() ota.Dialer {
	return func(ctx context.Context) (*rpc.Client, error) {
		c, err := f.Connect(ctx)
		if err != nil && !errors.Is(err, context.Canceled) {
			return nil, ota.WithReason(reasonFor(err), err)
		}
		return c, err
	}
}

// progressNote prints a step on stderr in human mode; in --json mode only
// with --verbose.
func (f *Factory) progressNote(format string, args ...any) {
	if f.G.JSON && !f.G.Verbose {
		return
	}
	f.note(format, args...)
}

// rebootTimeout bounds the wait for a device to come back after a reboot:
// --timeout when given, else at least two minutes (boards take a while to
// rejoin a network).
func (f *Factory) rebootTimeout() time.Duration {
	if f.timeoutSet || f.G.Timeout >= 2*time.Minute {
		return f.G.Timeout
	}
	return 2 * time.Minute
}
