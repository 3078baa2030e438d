package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"strings"
	"time"

	"github.com/otactl/otactl/pkg/fleet"
	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/rpc"
)

// updateRunner updates one device of a rollout with the ota.Updater of
// `otactl update` (the same flags, on a Factory of the device's own), and
// turns its report into the device's fleet outcome.
type updateRunner struct {
	f *Factory
	// o holds the update flags, and the --file bundle opened and checked
	// once for the rollout; each device runs a copy.
	o UpdateOptions
	// srv serves the --file bundle, a download of its own to each device.
	srv *ota.BundleServer
	// expect is the bundle's firmware (zero for a --url whose manifest
	// could not be read): a device that runs its build is skipped.
	expect ota.Firmware
}

// deviceFactory is a Factory for one device of a rollout: the fleet
// command's settings, the device's address, no output of its own (errOut
// gets its notes).
func (f *Factory) deviceFactory(t fleet.Target, errOut io.Writer) *Factory {
	sub := &Factory{
		IO:       &IOStreams{In: strings.NewReader(""), Out: io.Discard, ErrOut: errOut},
		Getenv:   f.Getenv,
		Registry: f.Registry,
		G:        f.G,
		// The fleet command warned about --insecure once.
		timeoutSet: f.timeoutSet, insecureWarned: true,
	}
	if p := f.cfg.Device(t.Device); p != nil {
		// A device listed by its name in the config file: its settings,
		// where the fleet command's flags and environment give none.
		p.applySettings(&sub.G, f.explicit)
		sub.timeoutSet = sub.timeoutSet || p.Timeout != nil
	}
	sub.G.Port, sub.G.JSON, sub.G.Verbose = t.Addr, false, false
	return sub
}

// fleetPhases names the phases of an update in the live view.
var fleetPhases = map[ota.Phase]string{
	ota.PhaseReboot: "rebooting", ota.PhaseHealth: "health check", ota.PhaseCommit: "committing", ota.PhaseRevert: "reverting",
}

// events turns an Updater's events into the device's progress.
func events(progress func(fleet.Progress)) func(ota.Event) {
	return func(ev ota.Event) {
		switch {
		case ev.Kind == ota.EventServed:
			phase := "downloading"
			if ev.Sent >= ev.Total-1 {
				phase = "installing"
			}
			progress(fleet.Progress{Phase: phase, Done: ev.Sent, Total: ev.Total})
		case ev.Kind == ota.EventPhase && fleetPhases[ev.Phase] != "":
			progress(fleet.Progress{Phase: fleetPhases[ev.Phase]})
		}
	}
}

// reportDoc is the update document of a device's report, as `otactl
// update --json` prints it.
func reportDoc(rep *ota.Report) *updateResult {
	doc := &updateResult{}
	doc.fill(rep)
	if rep.OK() {
		completeUpdateDoc(doc, nil)
	} else {
		completeUpdateDoc(doc, &ExitError{Code: rep.ExitCode(), Err: rep.Err})
	}
	return doc
}

// Run updates one device.
func (r *updateRunner) Run(ctx context.Context, t fleet.Target, progress func(fleet.Progress)) fleet.Result {
	sub := r.f.deviceFactory(t, io.Discard)
	progress(fleet.Progress{Phase: "checking"})
	var info ota.SysInfo
	var bs ota.BootState
	var at time.Time
	err := sub.withDevice(ctx, func(ctx context.Context, c *rpc.Client, d *ota.Device) error {
		var err error
		if info, err = d.GetInfo(ctx); err != nil {
			return err
		}
		at = time.Now()
		bs, err = d.GetBootState(ctx)
		return err
	})
	if err != nil {
		doc := &updateResult{}
		completeUpdateDoc(doc, err)
		return fleetResult(doc, ota.SysInfo{})
	}
	if r.expect.BuildID != "" && info.FWID == r.expect.BuildID && (bs.IsCommitted || !r.o.Commit) {
		committed := "committed"
		if !bs.IsCommitted {
			committed = "not committed"
		}
		return fleet.Result{Outcome: fleet.Skipped, Reason: string(ota.ReasonOK), ExitCode: ExitOK,
			Message:     "already runs " + info.Firmware().String() + ", " + committed + ": nothing sent",
			FromVersion: info.FWVersion, FromBuild: info.FWID, Version: info.FWVersion, BuildID: info.FWID}
	}
	if r.o.Commit && r.expect.BuildID != "" && info.FWID == r.expect.BuildID && ota.ViewBoot(bs, &info).OnTrial {
		return r.commitOnTrial(ctx, sub, info, bs, at, progress)
	}
	o := r.o
	o.F = sub
	u := o.updater(false)
	if r.srv != nil {
		u.Serve = func(bar func(sent, total int64)) (string, func()) {
			dl := r.srv.Register(r.o.bundle, bar)
			return dl.URL, dl.Close
		}
	}
	u.OnEvent = events(progress)
	progress(fleet.Progress{Phase: "updating"})
	return fleetResult(reportDoc(u.Run(ctx)), info)
}

// commitOnTrial finishes a device that already runs the bundle's build on
// trial (uncommitted: installed by an earlier run that was interrupted
// after the device rebooted, or by hand) when the rollout commits: the
// health check and the commit of `otactl update --commit`, reverting on a
// failed health check as it does. Nothing is sent again.
func (r *updateRunner) commitOnTrial(ctx context.Context, sub *Factory, info ota.SysInfo, bs ota.BootState, at time.Time, progress func(fleet.Progress)) fleet.Result {
	o := r.o
	o.F = sub
	u := o.updater(false)
	u.OnEvent = events(progress)
	progress(fleet.Progress{Phase: "committing"})
	return fleetResult(reportDoc(u.CommitTrial(ctx, info, bs, at)), info)
}

// fleetResult turns the document of one device's update into its fleet
// outcome.
func fleetResult(doc *updateResult, before ota.SysInfo) fleet.Result {
	res := fleet.Result{Reason: string(doc.Reason), Message: doc.Message, ExitCode: doc.ExitCode,
		FromVersion: doc.FromVersion, FromBuild: before.FWID, Version: doc.Version, BuildID: doc.BuildID}
	if res.FromVersion == "" {
		res.FromVersion = before.FWVersion
	}
	switch doc.Result {
	case string(ota.UpdatedCommitted):
		res.Outcome = fleet.UpdatedCommitted
	case string(ota.UpdatedUncommitted), string(ota.HealthCheckFailed):
		// A firmware left on trial after a failed health check runs,
		// uncommitted: it falls back at its commit timeout.
		res.Outcome = fleet.UpdatedUncommitted
	case string(ota.RolledBack):
		res.Outcome = fleet.RolledBack
	case string(ota.NotApplied):
		res.Outcome = fleet.NotApplied
		if doc.ExitCode == ExitUnreachable {
			res.Outcome = fleet.Unreachable // never reached: nothing was sent
		}
	default: // unknown: otactl cannot tell what the device runs
		res.Outcome = fleet.Unreachable
	}
	if res.Outcome == fleet.RolledBack || res.Outcome == fleet.NotApplied {
		if res.Version == "" {
			res.Version, res.BuildID = res.FromVersion, res.FromBuild
		}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if enc.Encode(doc) == nil {
		res.Report = json.RawMessage(bytes.TrimSpace(buf.Bytes()))
	}
	return res
}
