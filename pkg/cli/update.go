package cli

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/ota/bundle"
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

	// stopServing, when set, ends the bundle server of --file once the
	// update is decided.
	stopServing func()

	// fleet, when set (otactl fleet update), is this device's share of
	// the rollout: the bundle checked once, and a download of its own
	// from the rollout's bundle server instead of a one-shot server.
	fleet *fleetDevice
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

// healthOptions are the health check of --health-method.
func (o *UpdateOptions) healthOptions() ota.HealthOptions {
	f := o.F
	return ota.HealthOptions{Method: o.HealthMethod, Grace: o.HealthGrace, CallTimeout: min(f.G.Timeout, 5*time.Second),
		OnEvent: func(ev ota.Event) {
			if f.G.Verbose && ev.Attempt > 1 {
				f.note("health check: try %d of %s (last: %v)", ev.Attempt, o.HealthMethod, ev.Err)
			}
		}}
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

// localBundle checks a bundle file before sending it and returns what the
// new firmware will be.
func localBundle(path string) (*bundle.Report, error) {
	fh, err := openBundle(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	rep, err := bundle.Inspect(fh)
	if err != nil {
		return nil, &ExitError{Code: ExitUpdate, Err: ota.WithReason(ota.ReasonCorruptBundle, fmt.Errorf("%s is not a valid bundle, nothing was sent: %w", path, err))}
	}
	if len(rep.Problems) > 0 {
		return nil, &ExitError{Code: ExitUpdate, Err: ota.WithReason(ota.ReasonCorruptBundle, fmt.Errorf("%s is corrupt, nothing was sent: %w (check with 'otactl bundle verify')", path, rep.Problems[0]))}
	}
	return rep, nil
}

// prepare reads the device's state before an update and refuses what the
// device would refuse, and what otactl refuses on top (a bundle for
// another platform), with the reason in words. Once it returns without
// error, the update may be sent.
func (o *UpdateOptions) prepare(ctx context.Context, man *bundle.Manifest) (ota.Observation, error) {
	f := o.F
	doc := f.updateDoc()
	if man != nil {
		doc.Attempted = &ota.Firmware{Version: man.Version, BuildID: man.BuildID}
	}
	var before ota.Observation
	err := f.withDevice(ctx, func(ctx context.Context, c *rpc.Client, d *ota.Device) error {
		var err error
		before, err = d.Observe(ctx)
		return err
	})
	if err != nil {
		return before, err
	}
	doc.Before, doc.FromVersion = &before.Boot, before.Info.FWVersion
	if !before.Boot.IsCommitted {
		return before, &ExitError{Code: ExitUpdate, Err: fmt.Errorf("%w: %w: the device runs uncommitted firmware on slot %d: run 'otactl commit' to keep it or 'otactl revert' to go back, then update", ota.ErrUpdateFailed, ota.ErrUncommitted, before.Boot.ActiveSlot)}
	}
	if man != nil && before.Info.Arch != "" && !ota.SamePlatform(man.Platform, before.Info.Arch) {
		if !o.Force {
			return before, &ExitError{Code: ExitUpdate, Err: ota.WithReason(ota.ReasonWrongPlatform, fmt.Errorf(
				"%w: the bundle is for platform %q but the device is %q; nothing was sent (a device takes any bundle whose platform starts with its own, so it would install this one: --force sends it anyway)",
				ota.ErrUpdateFailed, man.Platform, before.Info.Arch))}
		}
		f.progressNote("warning: the bundle is for platform %q, the device is %q: sending it anyway (--force)", man.Platform, before.Info.Arch)
	}
	doc.sent = true
	return before, nil
}

func runUpdate(ctx context.Context, o *UpdateOptions) error {
	f := o.F
	var expect ota.Firmware
	var man *bundle.Manifest
	updateURL := o.URL
	if o.File != "" {
		rep, err := o.fleet.bundle()
		if rep == nil && err == nil {
			rep, err = localBundle(o.File)
		}
		if err != nil {
			return err
		}
		if err := o.Sig.checkSignatures(o.File, rep); err != nil {
			return err
		}
		man = rep.Manifest
		expect = ota.Firmware{Version: man.Version, BuildID: man.BuildID}
	} else if u, err := url.Parse(o.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return usageErrorf("--url must be an http:// or https:// URL the device can reach")
	} else if err := o.Sig.checkSignatures(o.URL, nil); err != nil {
		return err
	}
	before, err := o.prepare(ctx, man)
	if err != nil {
		return err
	}
	bar := f.newProgressBar("downloading")
	served := false // --file: the bar follows the bytes the device fetched
	if o.File != "" && o.fleet != nil {
		dl := o.fleet.download(func(sent, total int64) { bar.Bytes(min(sent, total-1), total) })
		o.stopServing = dl.Close
		updateURL = dl.URL
		served = true
	} else if o.File != "" {
		srv, err := serveOnce(o.File, o.ServeAddr, f.G.Port, func(sent, total int64) {
			// The last byte is shown once the device said it is done: it
			// still checks what it downloaded.
			bar.Bytes(min(sent, total-1), total)
		})
		if err != nil {
			return err
		}
		defer srv.Close()
		o.stopServing = func() { _ = srv.Close() }
		updateURL = srv.URL
		served = true
		f.progressNote("serving %s at %s (one download)", o.File, srv.URL)
	}

	var accepted ota.Accepted
	err = func() error {
		// The device answers OTA.Update only when the download is done: give
		// it as long as its own watchdog, plus the usual timeout.
		uctx, cancel := context.WithTimeout(ctx, o.UpdateTimeout+f.G.Timeout)
		defer cancel()
		c, err := f.Connect(uctx)
		if err != nil {
			return err
		}
		defer c.Close()
		accepted, err = ota.New(c).Update(uctx, ota.UpdateArgs{
			URL: updateURL, CommitTimeout: o.CommitTimeout.otaValue(), Timeout: o.UpdateTimeout,
			OnEvent: func(ev ota.Event) {
				if ev.Kind == ota.EventDownload && !served {
					bar.Percent(ev.Percent)
				}
			},
		})
		return err
	}()
	bar.Done()
	if err != nil || accepted.Confirmed {
		// Decided (or the device has the whole bundle): no more serving.
		o.stopServingNow()
	}
	if err != nil {
		if ctx.Err() != nil {
			return &InterruptedError{Err: err, Msg: o.interruptedDownload()}
		}
		return updateRejected(err, o.UpdateTimeout+f.G.Timeout)
	}
	return o.finish(ctx, before, accepted, expect, nil)
}

func (o *UpdateOptions) stopServingNow() {
	if o.stopServing != nil {
		o.stopServing()
		o.stopServing = nil
	}
}

// interruptedDownload says what becomes of an OTA.Update that otactl
// stopped waiting for: the device cannot be told to stop it.
func (o *UpdateOptions) interruptedDownload() string {
	if o.File != "" {
		return "otactl stopped serving the bundle, so the device's download fails and its boot state stays unchanged, unless it had already received the whole bundle: check with 'otactl status' and 'otactl bootstate'"
	}
	return "the device goes on with the update by itself (OTA.Update cannot be called off); if the bundle is good, it reboots into it uncommitted, and falls back unless you run 'otactl commit': check with 'otactl status' and 'otactl bootstate'"
}

// updateRejected turns a refused or failed transfer into exit code 6 while
// keeping the device's words.
func updateRejected(err error, timeout time.Duration) error {
	if errors.Is(err, rpc.ErrAuth) { // the device refused the caller (exit 4), not the bundle
		return fmt.Errorf("%w; its boot state is unchanged", err)
	}
	var ge *ota.GaveUpError
	if errors.As(err, &ge) { // says what the device does and what ends it
		return &UnreachableError{Err: err}
	}
	if errors.Is(err, ota.ErrBusy) { // already says what to do, and that the boot state stays
		return &ExitError{Code: ExitUpdate, Err: err}
	}
	if errors.Is(err, ota.ErrUpdateFailed) { // already says the update did not take
		if strings.Contains(err.Error(), "boot state is unchanged") {
			return &ExitError{Code: ExitUpdate, Err: err}
		}
		return &ExitError{Code: ExitUpdate, Err: fmt.Errorf("%w; its boot state is unchanged", err)}
	}
	var re *rpc.Error
	if errors.As(err, &re) {
		return &ExitError{Code: ExitUpdate, Err: fmt.Errorf("%w: the device did not take the update: %w; its boot state is unchanged", ota.ErrUpdateFailed, err)}
	}
	return deviceErr(err, timeout)
}

// transferInfo is what the push reports in --json.
type transferInfo struct {
	Bytes     int64   `json:"bytes"`
	ChunkSize int     `json:"chunk_size"`
	Chunks    int     `json:"chunks"`
	Retries   int     `json:"retries"`
	Resumes   int     `json:"resumes"`
	Seconds   float64 `json:"seconds"`
	BytesPerS float64 `json:"bytes_per_second"`
}

// finish waits for the device to come back after an accepted update, says
// what booted, and commits when asked.
func (o *UpdateOptions) finish(ctx context.Context, before ota.Observation, accepted ota.Accepted, expect ota.Firmware, tr *transferInfo) error {
	f := o.F
	res := f.updateDoc()
	res.Transfer = tr
	if res.Attempted == nil && !expect.IsZero() {
		res.Attempted = &expect
	}
	if o.NoWait {
		o.stopServingNow()
		res.Result, res.Reason = "accepted", ota.ReasonOK
		res.Message = "the device accepted the update and is rebooting into it (not waiting)"
		if f.G.JSON {
			return f.writeUpdateDoc(res, nil)
		}
		f.out("the device accepted the update and is rebooting into it (not waiting: check with 'otactl bootstate').")
		return nil
	}
	f.progressNote("bundle accepted; waiting for the device to reboot and answer…")
	wctx, cancel := context.WithTimeout(ctx, f.rebootTimeout()+verdictMargin)
	defer cancel()
	out, c, err := ota.WaitOutcome(wctx, ota.WaitOptions{
		Dial: f.dialer(), Before: before, Accepted: accepted.Confirmed, Expect: expect,
		RebootTimeout: f.rebootTimeout(),
		OnEvent: func(ev ota.Event) {
			if f.G.Verbose && ev.Msg != "" {
				f.note("%s", ev.Msg)
			}
		},
	})
	o.stopServingNow()
	if c != nil {
		defer c.Close()
	}
	if out == nil {
		if ctx.Err() != nil {
			msg := fmt.Sprintf("the device had accepted the update and was rebooting into it; nothing was committed: check what booted with 'otactl bootstate', and run 'otactl commit' to keep the new firmware (uncommitted, it falls back to slot %d)", before.Boot.ActiveSlot)
			if o.CommitTimeout.otaValue() == ota.AutoCommit {
				msg = "the device had accepted the update and was rebooting into it; with --commit-timeout 0 the new firmware commits itself at boot: check what booted with 'otactl bootstate'"
			}
			return &InterruptedError{Err: err, Msg: msg}
		}
		if !accepted.Confirmed {
			// The link went before the device answered: otactl does not
			// know that it took the update, nor that it rebooted.
			method := "OTA.Update"
			if tr != nil {
				method = "OTA.End"
			}
			return deviceErr(fmt.Errorf("lost the link before the device answered %s, and could not reach it again within %s: the update may still be running, or the device may have installed it and rebooted into it (on trial, not committed); check with 'otactl status' and 'otactl bootstate': %w",
				method, humanDuration(f.rebootTimeout()), err), f.rebootTimeout())
		}
		return deviceErr(fmt.Errorf("the device did not come back after the update: %w", err), f.rebootTimeout())
	}
	res.setOutcome(out)
	if res.Attempted == nil && out.Result.Took() {
		fw := out.Info.Firmware()
		res.Attempted = &fw
	}
	p := f.outPalette()

	if !out.Result.Took() {
		return f.updateFailed(res, out.Err())
	}

	if out.Result == ota.UpdatedUncommitted && o.Commit {
		if err := o.commit(ctx, c, out, before, res); err != nil {
			return err
		}
	}
	if !res.Committed && !out.CommitDeadline.IsZero() {
		d := out.CommitDeadline
		res.CommitDeadline = &d
		left := time.Until(d).Seconds()
		res.CommitIn = &left
	}
	if f.G.JSON {
		return f.writeUpdateDoc(res, nil)
	}
	name := strings.TrimSpace(out.Info.App + " " + out.Info.FWVersion)
	if res.Committed {
		f.out("%s slot %d runs %s, committed (was %s on slot %d).", p.green("updated:"), res.After.ActiveSlot, name, before.Info.FWVersion, before.Boot.ActiveSlot)
		return nil
	}
	left := ""
	if res.CommitDeadline != nil {
		left = " in " + humanDuration(time.Until(*res.CommitDeadline))
	}
	f.out("%s slot %d runs %s, %s. The device falls back to slot %d (%s)%s unless you run `otactl commit`.",
		p.green("updated:"), out.After.ActiveSlot, name, p.yellow("not yet committed"), out.After.RevertSlot, before.Info.FWVersion, left)
	return nil
}

// commit runs the health check (with its grace period) and commits the new
// firmware, filling res; a failure is returned after res was reported.
func (o *UpdateOptions) commit(ctx context.Context, c *rpc.Client, out *ota.Outcome, before ota.Observation, res *updateResult) error {
	f := o.F
	if o.HealthMethod != "" {
		f.progressNote("new firmware answers; checking its health with %s (for up to %s)…", o.HealthMethod, humanDuration(o.HealthGrace))
	}
	h := o.healthOptions()
	if !out.CommitDeadline.IsZero() {
		// Never check past the moment the device falls back by itself.
		if room := time.Until(out.CommitDeadline) - 2*time.Second; room < h.Grace {
			h.Grace = max(room, time.Second)
		}
	}
	// The health check has its own grace period (its last try may end one
	// call timeout later); the rest of the commit the usual --timeout.
	cctx, ccancel := context.WithTimeout(ctx, h.Grace+h.CallTimeout+f.G.Timeout)
	bs, err := ota.New(c).CommitAfterHealthCheck(cctx, h)
	ccancel()
	if errors.Is(err, ota.ErrAlreadyCommitted) && bs.ActiveSlot == out.After.ActiveSlot && bs.IsCommitted {
		err = nil // it committed itself meanwhile: the same slot, committed
	}
	switch {
	case err == nil:
		res.Result, res.Reason, res.Committed, res.After = string(ota.UpdatedCommitted), ota.ReasonOK, true, &bs
		res.Message = fmt.Sprintf("slot %d runs %s, committed", bs.ActiveSlot, out.Info.Firmware())
		if o.HealthMethod != "" {
			res.Message += " after " + o.HealthMethod + " answered"
		}
		return nil
	case errors.Is(err, ota.ErrAlreadyCommitted):
		// Between the outcome and the commit, the device fell back: the
		// commit timeout expired first (or someone reverted). (bs is still
		// the uncommitted state when the device could not be read again
		// after refusing OTA.Commit.)
		res.Result, res.Reason, res.Committed = string(ota.RolledBack), ota.ReasonRolledBack, true
		if bs.IsCommitted {
			res.After = &bs
		}
		res.Version, res.BuildID, res.Info = before.Info.FWVersion, before.Info.FWID, nil
		res.Message = fmt.Sprintf("slot %d ran %s uncommitted, but its commit timeout expired before otactl could commit it: the device falls back to slot %d", out.After.ActiveSlot, out.Info.Firmware(), out.After.RevertSlot)
		return f.updateFailed(res, fmt.Errorf("%w: %s", ota.ErrUpdateFailed, res.Message))
	case errors.Is(err, ota.ErrHealthCheck):
		return o.healthFailed(ctx, c, out, res, err)
	case ctx.Err() != nil:
		return &InterruptedError{Err: err, Msg: "the new firmware runs, but otactl may not have committed it: check with 'otactl bootstate', and run 'otactl commit' if it is not committed"}
	}
	return deviceErr(err, f.G.Timeout)
}

// healthFailed reverts a new firmware whose health check failed (or, with
// --on-health-fail wait, leaves it to fall back by itself) and reports it.
func (o *UpdateOptions) healthFailed(ctx context.Context, c *rpc.Client, out *ota.Outcome, res *updateResult, herr error) error {
	f := o.F
	var he *ota.HealthError
	why := herr.Error()
	if errors.As(herr, &he) {
		why = he.Error()
	}
	res.Reason = ota.ReasonHealthFailed
	res.HealthChecks = 0
	if he != nil {
		res.HealthChecks = he.Tries
	}
	if o.OnHealthFail == healthFailWait {
		res.Result = "health_check_failed"
		res.Message = fmt.Sprintf("%s; not committed: slot %d falls back to slot %d", why, out.After.ActiveSlot, out.After.RevertSlot)
		if !out.CommitDeadline.IsZero() {
			d := out.CommitDeadline
			res.CommitDeadline = &d
			left := time.Until(d).Seconds()
			res.CommitIn = &left
			res.Message += fmt.Sprintf(" when its commit timeout expires, at about %s (in %s),", d.Format(time.TimeOnly), humanDuration(time.Until(d)))
		}
		res.Message += " or at any reboot before that (--on-health-fail wait)"
		return f.updateFailed(res, ota.WithReason(ota.ReasonHealthFailed, fmt.Errorf("%w: %s", ota.ErrUpdateFailed, res.Message)))
	}
	f.progressNote("%s; reverting to slot %d…", why, out.After.RevertSlot)
	wctx, cancel := context.WithTimeout(ctx, min(revertRebootTimeout, f.rebootTimeout())+verdictMargin)
	defer cancel()
	rout, rc, err := ota.RevertAndWait(wctx, c, ota.WaitOptions{Dial: f.dialer(), RebootTimeout: min(revertRebootTimeout, f.rebootTimeout())})
	if rc != nil {
		rc.Close()
	}
	if rout != nil && rout.Result == ota.RolledBack {
		res.Result, res.Committed = string(ota.RolledBack), true
		res.After = &rout.After
		res.Version, res.BuildID, res.Info = rout.Info.FWVersion, rout.Info.FWID, rawJSON(rout.Info.Raw)
		res.CommitDeadline, res.CommitIn = nil, nil
		res.Message = fmt.Sprintf("%s; otactl reverted it: slot %d runs %s again, committed", why, rout.After.ActiveSlot, rout.Info.Firmware())
		return f.updateFailed(res, ota.WithReason(ota.ReasonHealthFailed, fmt.Errorf("%w: %s", ota.ErrUpdateFailed, res.Message)))
	}
	// The revert did not go through: the firmware stays uncommitted and
	// falls back by itself.
	res.Result = "health_check_failed"
	if errors.Is(err, ota.ErrAlreadyCommitted) {
		res.Message = fmt.Sprintf("%s; OTA.Revert was refused: the firmware is committed now (it fell back, or committed itself): check with 'otactl bootstate'", why)
	} else {
		res.Message = fmt.Sprintf("%s; reverting failed (%v): the firmware is not committed, so the device falls back to slot %d when its commit timeout expires or at any reboot", why, err, out.After.RevertSlot)
	}
	if ctx.Err() != nil {
		return &InterruptedError{Err: err, Msg: res.Message}
	}
	return f.updateFailed(res, ota.WithReason(ota.ReasonHealthFailed, fmt.Errorf("%w: %s", ota.ErrUpdateFailed, res.Message)))
}

// failedLabel heads the line of an update that did not take: only a
// device that came back on its old firmware rolled back; one that never
// switched (the update failed, or it did not reboot) did not apply it.
func failedLabel(result string) string {
	switch result {
	case string(ota.RolledBack):
		return "ROLLED BACK:"
	case "health_check_failed":
		return "HEALTH CHECK FAILED:"
	}
	return "NOT APPLIED:"
}

// verdictMargin extends the wait for an outcome past the reboot timeout, so
// that a device that answers all along on its old firmware is seen once
// more when that timeout passes and reported as NOT APPLIED (exit 6), not
// as unreachable (exit 5).
const verdictMargin = 5 * time.Second

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
