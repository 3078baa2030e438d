package cli

import (
	"context"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/otactl/otactl/pkg/fleet"
	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/ota/bundle"
	"github.com/otactl/otactl/pkg/transport"
)

// fleetUpdateOptions are the flags of `otactl fleet update`.
type fleetUpdateOptions struct {
	upd          UpdateOptions
	dev          fleetDevices
	plan         fleet.Plan
	journal      string
	serveAddr    string
	maxPerMinute float64
}

// Defaults of fleet update.
const (
	defaultFleetParallel = 10
	defaultFleetCanary   = 1
)

func newCmdFleetUpdate(f *Factory) *cobra.Command {
	o := &fleetUpdateOptions{upd: UpdateOptions{F: f, OnHealthFail: healthFailRevert}}
	cmd := &cobra.Command{
		Use:   "update (--url URL | --file FW.ZIP) (--devices FILE | --device PORT ... | --broker URL --ids FILE)",
		Short: "Update many devices: a canary first, then batches, stopping at a failure threshold",
		Long: `Update every device of an inventory with the flow of 'otactl update' (pre-checks,
download, reboot, verify, health check, commit), several at a time:

  1. the canary group (--canary, default 1 device) alone: it must end well, or
     nothing else starts;
  2. then the other devices, in batches (--batch, default all in one), at most
     --parallel in flight, no more than --max-per-minute starting a minute;
  3. once more devices failed than --max-failures allows (default 0: the first
     failure), no device is started any more; those in flight finish.

A device already running the bundle's build is skipped. --file serves the
bundle from this machine to every device, each with a download of its own.
Each device's outcome goes to --journal as it finishes: the same command with
the same journal skips the devices that ended well and retries the others.
Ctrl-C stops starting devices and lets those in flight finish; a second
Ctrl-C stops waiting for them. Exit 0 when every device ended updated
(committed, with --commit), 6 when any did not or the rollout stopped.
See docs/fleet.md.`,
		Example: `  otactl fleet update --file fw.zip --devices devices.txt --commit --journal rollout.jsonl
  otactl fleet update --url https://fw.example.com/2.0.0/fw.zip --broker mqtt://broker:1883 --ids ids.txt \
      --canary 5 --batch 10% --max-failures 2% --parallel 50 --max-per-minute 120 --commit --json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runFleetUpdate(cmd, f, o)
		},
	}
	fl := cmd.Flags()
	u := &o.upd
	fl.StringVar(&u.URL, "url", "", "bundle URL every device downloads (http or https)")
	fl.StringVar(&u.File, "file", "", "local bundle, served by otactl to every device")
	fl.StringVar(&o.serveAddr, "serve-addr", "", "with --file: HOST[:PORT] of this machine that the devices can reach")
	fl.Var(&u.CommitTimeout, "commit-timeout", "seconds each new firmware waits for its commit before the device rolls back, up to 2147483 (0 = commit at boot, needs --force)")
	u.UpdateTimeout = ota.DefaultUpdateTimeout
	fl.Var(secondsFlag{d: &u.UpdateTimeout, max: ota.MaxTimeout, rangeText: updateRange}, "update-timeout", "device watchdog: a device aborts its update after this long (seconds, or 10m)")
	fl.BoolVar(&u.Commit, "commit", false, "commit each new firmware once it answers (after --health-method, if given)")
	fl.StringVar(&u.HealthMethod, "health-method", "", "with --commit: RPC method each new firmware must answer without error before it is committed (else it is reverted)")
	u.HealthGrace = ota.DefaultHealthGrace
	fl.Var(secondsFlag{d: &u.HealthGrace, max: ota.MaxTimeout, rangeText: "must be from 1s to 2147483s"}, "health-grace", "how long --health-method may fail or stay silent before the firmware counts as unhealthy")
	fl.BoolVar(&u.Force, "force", false, "allow --commit-timeout 0, and send a bundle whose platform differs from a device's")
	u.Sig.add(fl)
	o.dev.add(fl)
	fl.IntVar(&o.plan.Parallel, "parallel", defaultFleetParallel, "devices in flight at once (Ansible: forks)")
	fl.IntVar(&o.plan.Canary, "canary", defaultFleetCanary, "devices updated first, alone; all must end well before any other starts (0: no canary)")
	fl.Var(fleet.SizeFlag{S: &o.plan.Batch}, "batch", "devices per batch after the canary, N or P% of them; a batch starts when the one before has finished (Ansible: serial; default: one batch)")
	fl.Var(fleet.SizeFlag{S: &o.plan.MaxFailures}, "max-failures", "failed devices tolerated, N or P% of the devices of this run; one more stops the rollout (hawkBit: error threshold; default 0)")
	fl.Float64Var(&o.maxPerMinute, "max-per-minute", 0, "devices started a minute at most, evenly spaced (AWS IoT Jobs: maximumPerMinute; 0: no limit)")
	fl.StringVar(&o.journal, "journal", "", "file recording each device's outcome as it finishes (JSON lines); run again with it to resume")
	return cmd
}

// check validates the flags that do not need a file or a device.
func (o *fleetUpdateOptions) check() error {
	u := &o.upd
	if (u.URL == "") == (u.File == "") {
		return usageErrorf("fleet update needs exactly one of --url URL or --file FW.ZIP")
	}
	if err := u.check(); err != nil {
		return err
	}
	if o.serveAddr != "" && u.File == "" {
		return usageErrorf("--serve-addr goes with --file")
	}
	if o.plan.Parallel < 1 {
		return usageErrorf("--parallel must be at least 1")
	}
	if o.plan.Canary < 0 {
		return usageErrorf("--canary must be 0 or more")
	}
	if o.plan.Batch.IsSet() && !o.plan.Batch.IsPct && o.plan.Batch.N < 1 {
		return usageErrorf("--batch must be at least 1 device (or a percentage)")
	}
	if o.plan.Batch.IsSet() && o.plan.Batch.IsPct && o.plan.Batch.Percent <= 0 {
		return usageErrorf("--batch must be more than 0%%")
	}
	if o.maxPerMinute < 0 || math.IsNaN(o.maxPerMinute) || math.IsInf(o.maxPerMinute, 0) {
		return usageErrorf("--max-per-minute must be a positive number of devices a minute, or 0 for no limit")
	}
	o.plan.MaxPerMinute = o.maxPerMinute
	o.plan.Commit = u.Commit
	return nil
}

// fleetBundle reads what the rollout installs: the --file bundle, checked
// (a corrupt one stops everything before any device is contacted), or the
// manifest at --url when this machine can read it.
func (o *fleetUpdateOptions) fleetBundle(ctx context.Context, f *Factory) (fleet.Bundle, *ota.LocalBundle, error) {
	u := &o.upd
	if u.File != "" {
		lb, err := ota.OpenBundle(u.File)
		if err != nil {
			return fleet.Bundle{}, nil, err
		}
		if err := u.Sig.checkSignatures(u.File, lb.Report); err != nil {
			lb.Close()
			return fleet.Bundle{}, nil, err
		}
		abs, _ := filepath.Abs(u.File)
		return fleet.Bundle{Version: lb.Manifest().Version, BuildID: lb.Manifest().BuildID, Source: abs}, lb, nil
	}
	pu, err := url.Parse(u.URL)
	if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
		return fleet.Bundle{}, nil, usageErrorf("--url must be an http:// or https:// URL the devices can reach")
	}
	if err := u.Sig.checkSignatures(u.URL, nil); err != nil {
		return fleet.Bundle{}, nil, err
	}
	b := fleet.Bundle{Source: transport.Redact(pu)}
	man, err := manifestAt(ctx, u.URL, f.G.Timeout)
	if err != nil {
		f.note("warning: cannot read the bundle's manifest at %s from here (%v): devices already on it are not skipped, and the journal identifies the rollout by its URL", b.Source, err)
		return b, nil, nil
	}
	b.Version, b.BuildID = man.Version, man.BuildID
	return b, nil, nil
}

// manifestAt reads the manifest at the start of the bundle at u (the first
// entry of the zip), and hangs up.
func manifestAt(ctx context.Context, u string, timeout time.Duration) (*bundle.Manifest, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s", transport.RedactString(err.Error()))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP %s", resp.Status)
	}
	rd, err := bundle.NewReader(resp.Body)
	if err != nil {
		return nil, err
	}
	return rd.Manifest(), nil
}

// interrupts returns a context that ends at the second interrupt (the
// first ends ctx, in Main), and a function that stops listening.
func (f *Factory) interrupts(ctx context.Context) (context.Context, func()) {
	hard, cancel := context.WithCancel(context.WithoutCancel(ctx))
	ch := make(chan os.Signal, 4)
	if f.notifySignals != nil {
		f.notifySignals(ch)
	} else {
		signal.Notify(ch, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	}
	done := make(chan struct{})
	go func() {
		n := 0
		for {
			select {
			case <-ch:
				if n++; n >= 2 {
					cancel()
				}
			case <-done:
				return
			}
		}
	}()
	return hard, func() {
		signal.Stop(ch)
		close(done)
		cancel()
	}
}

func runFleetUpdate(cmd *cobra.Command, f *Factory, o *fleetUpdateOptions) error {
	ctx := cmd.Context()
	if err := o.check(); err != nil {
		return err
	}
	targets, err := o.dev.targets(f, cmd)
	if err != nil {
		return err
	}
	if _, err := f.transportOptions(); err != nil { // TLS and credential flags, once
		return err
	}
	b, lb, err := o.fleetBundle(ctx, f)
	if err != nil {
		return err
	}
	if lb != nil {
		defer lb.Close()
	}

	// The journal: what ended well in an earlier run is not run again.
	done, retry := map[int]fleet.Record{}, map[int]bool{}
	var journal *fleet.Journal
	if o.journal != "" {
		past, err := fleet.ReadJournal(o.journal)
		if err != nil {
			return usageErrorf("--journal: %v", err)
		}
		if err := past.Check(o.journal, b); err != nil {
			return &UsageError{Err: err}
		}
		if past.Torn {
			f.note("note: the journal's last line was cut short (otactl stopped while writing it): that device runs again")
		}
		for i, t := range targets {
			rec, ok := past.Records[t.Address]
			switch {
			case !ok:
			case rec.Outcome.Ok(o.plan.Commit):
				done[i] = rec
			case rec.Outcome.Failed(o.plan.Commit):
				retry[i] = true
			}
		}
	}
	toRun := len(targets) - len(done)

	runner := &updateRunner{f: f, o: o.upd}
	if lb != nil {
		runner.o.bundle, runner.expect = lb, lb.Firmware()
	} else if b.BuildID != "" {
		runner.expect = ota.Firmware{Version: b.Version, BuildID: b.BuildID}
	}
	if o.upd.File != "" && toRun > 0 {
		ln, err := listenForDevices(o.serveAddr, targets[0].Addr)
		if err != nil {
			return err
		}
		srv := ota.ServeBundles(ln)
		defer srv.Close()
		runner.srv = srv
		f.progressNote("serving %s (%s) at http://%s/…, a download of its own for each device", o.upd.File, humanBytes(lb.Size), ln.Addr())
	}
	if o.journal != "" {
		journal, err = fleet.OpenJournal(o.journal, b, o.plan.Commit, len(targets), time.Now())
		if err != nil {
			return fmt.Errorf("--journal %s: %w", o.journal, err)
		}
		defer journal.Close()
	}

	hard, stopListening := f.interrupts(ctx)
	defer stopListening()
	var obs fleet.Observer
	var live *liveView
	switch {
	case f.IO.ErrTTY && !f.G.Verbose:
		width := 0
		if f.IO.ErrWidth != nil {
			width = f.IO.ErrWidth()
		}
		live = newLiveView(f.IO.ErrOut, width, terminalRows(f.IO.ErrOut), targets, toRun, o.plan.Commit, nil)
		obs = live
	case !f.G.JSON || f.G.Verbose:
		obs = &lineView{w: f.IO.ErrOut, nameW: nameWidth(targets), total: toRun}
	}
	if len(done) > 0 {
		f.progressNote("journal %s: %d of %d devices ended well in an earlier run and are not run again", o.journal, len(done), len(targets))
	}
	f.progressNote("updating %d devices to %s: canary %d, %s, at most %d in flight", toRun, b, min(o.plan.Canary, toRun), batchText(o.plan.Batch), o.plan.Parallel)
	start := time.Now()
	r := &fleet.Rollout{Plan: o.plan, Targets: targets, Runner: runner, Done: done, Retry: retry, Journal: journal, Observer: obs}
	sum := r.Run(ctx, hard)
	end := time.Now()
	if live != nil {
		live.Close()
	}
	doc := newFleetDoc(o, b, sum, start, end)
	code := doc.ExitCode
	if f.G.JSON {
		if err := writeJSON(f.IO.Out, doc); err != nil {
			return err
		}
	} else {
		f.writeFleetSummary(targets, o, sum, doc)
	}
	switch {
	case code == ExitOK:
		return nil
	case sum.Stop != nil && sum.Stop.Reason == "interrupted":
		return &InterruptedError{Msg: "no more devices were started; every device that was in flight is in the summary: run the same command again to go on"}
	}
	return &ExitError{Code: code, Err: fmt.Errorf("%s", doc.Message), Silent: !f.G.JSON}
}

func batchText(b fleet.Size) string {
	if !b.IsSet() {
		return "then the rest in one batch"
	}
	return "then batches of " + b.String()
}

// listenForDevices opens the bundle server's listener: --serve-addr, or
// this machine's address on the route to the first device.
func listenForDevices(serveAddr, firstDevice string) (net.Listener, error) {
	host, p := serveAddr, "0"
	if serveAddr != "" {
		if h, pp, err := net.SplitHostPort(serveAddr); err == nil {
			host, p = h, pp
		}
	} else {
		var err error
		if host, err = ota.ServeHost(firstDevice); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, p))
	if err != nil {
		return nil, usageErrorf("--serve-addr %s: %v", net.JoinHostPort(host, p), err)
	}
	return ln, nil
}

// fleetDoc is the --json document of fleet update: the totals, then every
// device's record with its update report.
type fleetDoc struct {
	// Result: "ok", "failed" (some device did not end well), "stopped"
	// (the rollout stopped at its threshold or canary), "interrupted".
	Result   string           `json:"result"`
	Message  string           `json:"message"`
	ExitCode int              `json:"exit_code"`
	Bundle   fleet.Bundle     `json:"bundle"`
	Plan     fleetPlanDoc     `json:"plan"`
	Totals   fleetTotals      `json:"totals"`
	Stopped  *fleet.Stop      `json:"stopped,omitempty"`
	Started  time.Time        `json:"started"`
	Finished time.Time        `json:"finished"`
	Seconds  float64          `json:"seconds"`
	Journal  string           `json:"journal,omitempty"`
	Devices  []fleetRecordDoc `json:"devices"`
}

type fleetPlanDoc struct {
	Parallel     int     `json:"parallel"`
	Canary       int     `json:"canary"`
	Batch        string  `json:"batch,omitempty"`
	MaxFailures  string  `json:"max_failures"`
	Threshold    int     `json:"threshold"`
	MaxPerMinute float64 `json:"max_per_minute,omitempty"`
	Commit       bool    `json:"commit"`
}

type fleetTotals struct {
	Devices int `json:"devices"`
	// ByOutcome counts every outcome (zero ones included).
	ByOutcome map[fleet.Outcome]int `json:"by_outcome"`
	// Ok: devices that ended well; Failed: those that did not (not
	// started ones apart); Ran: started in this run.
	Ok       int `json:"ok"`
	Failed   int `json:"failed"`
	Ran      int `json:"ran"`
	Failures int `json:"failures_this_run"`
}

type fleetRecordDoc struct {
	fleet.Record
	Seconds float64 `json:"seconds,omitempty"`
}

// fleetExit is the exit code of a rollout (docs/exit-codes.md): 0 when
// every device ended well; 1 when interrupted (or the journal could not be
// written); when nothing was updated and every failure has the same exit
// code 4 or 5 (the broker refused the credentials, or no device could be
// reached: the link, not the firmware), that code; else 6.
func fleetExit(sum *fleet.Summary, commit bool) int {
	if sum.Ok(commit) {
		return ExitOK
	}
	if sum.Stop != nil && (sum.Stop.Reason == "interrupted" || sum.Stop.Reason == "journal") {
		return ExitFailure
	}
	updated, codes := 0, map[int]bool{}
	for _, r := range sum.Records {
		switch {
		case r.FromJournal || r.Outcome == fleet.NotStarted:
		case r.Outcome.Ok(commit) && r.Outcome != fleet.Skipped:
			updated++
		case r.Outcome.Failed(commit):
			codes[r.ExitCode] = true
		}
	}
	if updated == 0 && len(codes) == 1 && (codes[ExitUnreachable] || codes[ExitAuth]) {
		if codes[ExitAuth] {
			return ExitAuth
		}
		return ExitUnreachable
	}
	return ExitUpdate
}

func newFleetDoc(o *fleetUpdateOptions, b fleet.Bundle, sum *fleet.Summary, start, end time.Time) *fleetDoc {
	doc := &fleetDoc{Bundle: b, Started: start.UTC(), Finished: end.UTC(), Seconds: millis(end.Sub(start)),
		Journal: o.journal, Stopped: sum.Stop,
		Plan: fleetPlanDoc{Parallel: o.plan.Parallel, Canary: o.plan.Canary, MaxFailures: o.plan.MaxFailures.String(), Threshold: sum.Threshold,
			MaxPerMinute: o.plan.MaxPerMinute, Commit: o.plan.Commit},
		Totals: fleetTotals{Devices: len(sum.Records), ByOutcome: map[fleet.Outcome]int{}, Ran: sum.Ran, Failures: sum.Failures}}
	if o.plan.Batch.IsSet() {
		doc.Plan.Batch = o.plan.Batch.String()
	}
	for _, oc := range fleet.Outcomes {
		doc.Totals.ByOutcome[oc] = sum.Totals[oc]
	}
	for _, r := range sum.Records {
		switch {
		case r.Outcome.Ok(o.plan.Commit):
			doc.Totals.Ok++
		case r.Outcome.Failed(o.plan.Commit):
			doc.Totals.Failed++
		}
		rd := fleetRecordDoc{Record: r}
		if d := r.Duration(); d > 0 {
			rd.Seconds = millis(d)
		}
		doc.Devices = append(doc.Devices, rd)
	}
	doc.ExitCode = fleetExit(sum, o.plan.Commit)
	want := "updated"
	if o.plan.Commit {
		want = "updated and committed"
	}
	switch {
	case doc.ExitCode == ExitOK:
		doc.Result = "ok"
		doc.Message = fmt.Sprintf("all %d devices run %s, %s", len(sum.Records), b, strings.TrimPrefix(want, "updated and "))
		if !o.plan.Commit {
			doc.Message = fmt.Sprintf("all %d devices run %s", len(sum.Records), b)
		}
	case sum.Stop != nil && sum.Stop.Reason == "interrupted":
		doc.Result = "interrupted"
		doc.Message = sum.Stop.Message
	case sum.Stop != nil:
		doc.Result = "stopped"
		doc.Message = fmt.Sprintf("rollout stopped: %s; %d of %d devices %s", sum.Stop.Message, doc.Totals.Ok, len(sum.Records), want)
	default:
		doc.Result = "failed"
		doc.Message = fmt.Sprintf("%d of %d devices did not end %s", doc.Totals.Failed+sum.Totals[fleet.NotStarted], len(sum.Records), want)
	}
	return doc
}

// writeFleetSummary prints the summary table, the failures' messages and
// the totals on stdout.
func (f *Factory) writeFleetSummary(targets []fleet.Target, o *fleetUpdateOptions, sum *fleet.Summary, doc *fleetDoc) {
	p := f.outPalette()
	w := tabwriter.NewWriter(&trimmedLines{w: f.IO.Out}, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "DEVICE\tVERSION\tOUTCOME\tDURATION\tNOTE")
	for _, r := range sum.Records {
		note := ""
		switch {
		case r.FromJournal:
			note = "earlier run (journal)"
		case r.Outcome.Failed(o.plan.Commit):
			note = r.Reason
		case r.Canary:
			note = "canary"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", r.Device, versionChange(r), r.Outcome, fleetDuration(r), note)
	}
	w.Flush()
	var failed []fleet.Record
	for _, r := range sum.Records {
		if r.Outcome.Failed(o.plan.Commit) && !r.FromJournal {
			failed = append(failed, r)
		}
	}
	if len(failed) > 0 {
		fmt.Fprintln(f.IO.Out)
		for _, r := range failed {
			fmt.Fprintf(f.IO.Out, "%s %s: %s\n", p.red(strings.ToUpper(string(r.Outcome))+":"), r.Device, r.Message)
		}
	}
	fmt.Fprintln(f.IO.Out)
	var parts []string
	for _, oc := range fleet.Outcomes {
		if n := sum.Totals[oc]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, oc))
		}
	}
	fmt.Fprintf(f.IO.Out, "%d devices: %s (in %s)\n", len(sum.Records), strings.Join(parts, ", "), humanDuration(doc.Finished.Sub(doc.Started)))
	switch {
	case doc.ExitCode == ExitOK:
		fmt.Fprintf(f.IO.Out, "%s %s\n", p.green("done:"), doc.Message)
	case sum.Stop != nil:
		fmt.Fprintf(f.IO.Out, "%s %s\n", p.red("stopped:"), sum.Stop.Message)
	default:
		fmt.Fprintf(f.IO.Out, "%s %s\n", p.red("failed:"), doc.Message)
	}
	if o.journal != "" && doc.ExitCode != ExitOK {
		fmt.Fprintf(f.IO.Out, "journal: %s; run the same command again to retry the devices that did not end well\n", o.journal)
	}
}
