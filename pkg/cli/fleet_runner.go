package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/otactl/otactl/pkg/fleet"
	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/ota/bundle"
	"github.com/otactl/otactl/pkg/rpc"
)

// updateRunner updates one device of a rollout with the flow of `otactl
// update` (runUpdate, on a Factory of the device's own), and turns its
// report into the device's fleet outcome.
type updateRunner struct {
	f *Factory
	// o holds the update flags; each device runs a copy.
	o UpdateOptions
	// rep is the --file bundle, checked once; srv serves it.
	rep *bundle.Report
	srv *fleet.BundleServer
	// expect is the bundle's firmware (zero for a --url whose manifest
	// could not be read): a device that runs its build is skipped.
	expect ota.Firmware
}

// fleetDevice is one device's share of a rollout, for runUpdate.
type fleetDevice struct {
	rep      *bundle.Report
	srv      *fleet.BundleServer
	progress func(fleet.Progress)
}

// bundle is the rollout's checked bundle (nil outside a rollout).
func (d *fleetDevice) bundle() (*bundle.Report, error) {
	if d == nil {
		return nil, nil
	}
	return d.rep, nil
}

// download gives the device a download of its own from the rollout's
// server; bar also follows its bytes.
func (d *fleetDevice) download(bar func(sent, total int64)) *fleet.Download {
	return d.srv.NewDownload(func(sent, total int64) {
		bar(sent, total)
		phase := "downloading"
		if sent >= total {
			phase = "installing"
		}
		d.progress(fleet.Progress{Phase: phase, Done: sent, Total: total})
	})
}

// deviceFactory is a Factory for one device of a rollout: the fleet
// command's settings, the device's address, no output of its own (errOut
// gets its progress notes).
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

// phaseWriter turns the notes runUpdate prints into the device's phase.
type phaseWriter struct {
	mu       sync.Mutex
	progress func(fleet.Progress)
}

func (w *phaseWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, line := range strings.Split(string(p), "\n") {
		switch {
		case strings.HasPrefix(line, "bundle accepted"):
			w.progress(fleet.Progress{Phase: "rebooting"})
		case strings.Contains(line, "checking its health"):
			w.progress(fleet.Progress{Phase: "health check"})
		case strings.Contains(line, "reverting"):
			w.progress(fleet.Progress{Phase: "reverting"})
		}
	}
	return len(p), nil
}

// Run updates one device.
func (r *updateRunner) Run(ctx context.Context, t fleet.Target, progress func(fleet.Progress)) fleet.Result {
	sub := r.f.deviceFactory(t, &phaseWriter{progress: progress})
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
	o.Sig = sigCheckFlags{} // checked once, for the whole rollout
	if r.srv != nil {
		o.fleet = &fleetDevice{rep: r.rep, srv: r.srv, progress: progress}
	}
	progress(fleet.Progress{Phase: "updating"})
	err = runUpdate(ctx, &o)
	doc := sub.updateDoc()
	completeUpdateDoc(doc, err)
	return fleetResult(doc, info)
}

// commitOnTrial finishes a device that already runs the bundle's build on
// trial (uncommitted: installed by an earlier run that was interrupted
// after the device rebooted, or by hand) when the rollout commits: the
// health check and the commit of `otactl update --commit`, reverting on a
// failed health check as it does. Nothing is sent again.
func (r *updateRunner) commitOnTrial(ctx context.Context, sub *Factory, info ota.SysInfo, bs ota.BootState, at time.Time, progress func(fleet.Progress)) fleet.Result {
	o := r.o
	o.F = sub
	res := sub.updateDoc()
	fw := info.Firmware()
	res.Attempted, res.Before, res.FromVersion = &fw, &bs, info.FWVersion
	out := &ota.Outcome{Result: ota.UpdatedUncommitted, Reason: ota.ReasonOK, Before: bs, After: bs, BeforeInfo: info, Info: info,
		Message: fmt.Sprintf("slot %d already runs %s, uncommitted", bs.ActiveSlot, fw)}
	if v := ota.ViewBoot(bs, &info); v.FallbackIn != nil {
		out.CommitDeadline = at.Add(*v.FallbackIn)
	}
	res.setOutcome(out)
	progress(fleet.Progress{Phase: "committing"})
	// The firmware it falls back to is not known here: a device that fell
	// back before the commit is read again below.
	before := ota.Observation{Boot: bs, At: at}
	err := sub.withDevice(ctx, func(ctx context.Context, c *rpc.Client, d *ota.Device) error {
		err := o.commit(ctx, c, out, before, res)
		if res.Result == string(ota.RolledBack) && res.Version == "" {
			if now, ierr := d.GetInfo(ctx); ierr == nil {
				res.Version, res.BuildID = now.FWVersion, now.FWID
			}
		}
		return err
	})
	if err == nil && res.Committed {
		res.Message = "it already ran the build on trial (nothing sent): " + res.Message
	}
	completeUpdateDoc(res, err)
	return fleetResult(res, info)
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
	case string(ota.UpdatedUncommitted), "health_check_failed":
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
