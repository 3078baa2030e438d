package fleet

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Runner updates one device: pre-checks, transfer, reboot, verify, health
// check, commit (pkg/ota's update workflow), and says where the device
// ended. Run must return when ctx ends, with the outcome as far as it is
// known; it is called concurrently for different targets. progress, if
// the runner calls it, reports the device's phase for a live view.
type Runner interface {
	Run(ctx context.Context, t Target, progress func(Progress)) Result
}

// RunnerFunc adapts a function to a Runner.
type RunnerFunc func(ctx context.Context, t Target, progress func(Progress)) Result

// Run calls f.
func (f RunnerFunc) Run(ctx context.Context, t Target, progress func(Progress)) Result {
	return f(ctx, t, progress)
}

// Progress is one device's phase ("checking", "downloading", "rebooting",
// "committing", …) and, while it downloads, the bytes it fetched of Total.
type Progress struct {
	Phase       string
	Done, Total int64
}

// Plan is the shape of a rollout.
type Plan struct {
	// Parallel is how many devices may be in flight at once (at least 1).
	Parallel int
	// Canary is the size of the canary group: devices updated first, all
	// of which must end well before any other device starts (0: none).
	// Devices skipped (already on the build) do not count towards it;
	// devices that the journal shows updated by an earlier run of the
	// rollout do: a resumed rollout whose canaries already succeeded has
	// no canary group left.
	Canary int
	// Batch splits the devices after the canary group: a batch starts once
	// the one before it has finished (Ansible's serial). Unset: one batch.
	Batch Size
	// MaxFailures is the failure threshold: once more devices than this
	// failed (a count, or a share of the devices of this run), no device
	// is started any more; those in flight finish. Unset: 0, the first
	// failure stops the rollout.
	MaxFailures Size
	// MaxPerMinute limits how many devices start a minute (0: no limit):
	// starts are spaced 60/MaxPerMinute seconds apart.
	MaxPerMinute float64
	// Commit: the rollout commits the new firmware, so a device ends well
	// only committed.
	Commit bool
}

// Clock is the rollout's time source; nil is the real clock (which
// testing/synctest fakes in tests).
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Observer follows a rollout; the CLI's live view and line output are
// observers. Calls come from the rollout's goroutine, one at a time,
// except Progress, which comes from the device's runner as it goes.
type Observer interface {
	// Started: the device at index i (in Rollout.Targets) was started.
	Started(i int, r Record)
	// Progress: the device at index i reported its phase.
	Progress(i int, p Progress)
	// Finished: the device at index i ended (its record is in the
	// journal already).
	Finished(i int, r Record)
	// Stopped: the rollout stops starting devices.
	Stopped(s Stop)
}

// Stop says why a rollout stopped starting devices.
type Stop struct {
	// Reason: "canary_failed", "max_failures" or "interrupted".
	Reason string `json:"reason"`
	// At is when the rollout stopped starting devices: when it learnt of
	// the failure that crossed the threshold (or failed the canary group),
	// or of the interruption. No device of the rollout started after At.
	At time.Time `json:"at"`
	// Failures and Threshold: the failures counted then, and the most the
	// plan allowed.
	Failures  int    `json:"failures"`
	Threshold int    `json:"threshold"`
	Device    string `json:"device,omitempty"`
	Message   string `json:"message"`
}

// Rollout is one run of a plan over targets.
type Rollout struct {
	Plan    Plan
	Targets []Target
	Runner  Runner
	// Done holds the targets (by index) that ended well in an earlier run,
	// read from the journal: they are not run again and keep that record.
	Done map[int]Record
	// Retry holds the targets (by index) that failed in an earlier run:
	// they start after every other device, so that the canary group is
	// made of devices not known to fail, and the devices never tried go
	// first.
	Retry map[int]bool
	// Journal, if set, gets every record as its device finishes.
	Journal  *Journal
	Observer Observer
	Clock    Clock
}

// Summary is the end of a rollout.
type Summary struct {
	// Records has one record per target, in the targets' order.
	Records []Record `json:"devices"`
	// Totals counts the records by outcome.
	Totals map[Outcome]int `json:"totals"`
	// Failures counts the devices of this run that failed; Threshold is
	// the most the plan allowed.
	Failures  int `json:"failures"`
	Threshold int `json:"threshold"`
	// Stop is set when the rollout stopped before its end.
	Stop *Stop `json:"stopped,omitempty"`
	// Ran counts the devices started in this run.
	Ran int `json:"ran"`
	// JournalErr is the first error writing the journal (the rollout
	// stops starting devices then: a record it cannot keep would make a
	// resume update a device twice).
	JournalErr error `json:"-"`
}

// Ok reports whether every device ended well.
func (s *Summary) Ok(commit bool) bool {
	for _, r := range s.Records {
		if !r.Outcome.Ok(commit) {
			return false
		}
	}
	return s.Stop == nil && s.JournalErr == nil
}

type done struct {
	i          int
	rec        Record
	journalErr error
}

type nopObserver struct{}

func (nopObserver) Started(int, Record)    {}
func (nopObserver) Progress(int, Progress) {}
func (nopObserver) Finished(int, Record)   {}
func (nopObserver) Stopped(Stop)           {}

// Run runs the rollout. ctx ending (the first Ctrl-C) stops starting
// devices; the devices in flight run on under hard, which ends them (the
// second Ctrl-C). Run returns once every started device has finished.
func (r *Rollout) Run(ctx, hard context.Context) *Summary {
	clock := r.Clock
	if clock == nil {
		clock = realClock{}
	}
	obs := r.Observer
	if obs == nil {
		obs = nopObserver{}
	}
	p := r.Plan
	p.Parallel = max(p.Parallel, 1)

	sum := &Summary{Records: make([]Record, len(r.Targets)), Totals: map[Outcome]int{}}
	var queue, retry []int
	for i, t := range r.Targets {
		if rec, ok := r.Done[i]; ok {
			rec.FromJournal = true
			sum.Records[i] = rec
			continue
		}
		sum.Records[i] = Record{Device: t.Name, Address: t.Address, Result: Result{Outcome: NotStarted, Reason: "not_started"}}
		if r.Retry[i] {
			retry = append(retry, i)
		} else {
			queue = append(queue, i)
		}
	}
	queue = append(queue, retry...)
	sum.Threshold = p.MaxFailures.Floor(len(queue))
	// Devices an earlier run updated proved the bundle as canaries would.
	for _, rec := range r.Done {
		if rec.Outcome.Ok(p.Commit) && rec.Outcome != Skipped {
			p.Canary--
		}
	}
	p.Canary = max(p.Canary, 0)

	results := make(chan done)
	inflight := 0
	var lastStart time.Time
	var wg sync.WaitGroup
	defer wg.Wait()

	var pace func() bool
	stop := func(s Stop) {
		if sum.Stop == nil {
			sum.Stop = &s
			obs.Stopped(s)
		}
	}
	interrupted := func() bool {
		if ctx.Err() == nil {
			return false
		}
		stop(Stop{Reason: "interrupted", At: clock.Now(), Failures: sum.Failures, Threshold: sum.Threshold,
			Message: "interrupted: no more devices were started; those in flight finished"})
		return true
	}
	start := func(i, batch int, canary bool) bool {
		if !pace() || interrupted() || sum.Stop != nil {
			return false
		}
		now := clock.Now()
		lastStart = now
		rec := sum.Records[i]
		rec.Started, rec.Canary, rec.Batch = now, canary, batch
		sum.Records[i] = rec
		inflight++
		sum.Ran++
		obs.Started(i, rec)
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := r.Runner.Run(hard, r.Targets[i], func(pr Progress) { obs.Progress(i, pr) })
			rec.Result = res
			rec.Finished = clock.Now()
			var jerr error
			if r.Journal != nil {
				// Durable before the rollout counts it: a device
				// reported finished is in the journal.
				jerr = r.Journal.Append(rec)
			}
			results <- done{i: i, rec: rec, journalErr: jerr}
		}()
		return true
	}
	// finish takes one result: journal, counts, threshold.
	finish := func(d done) {
		inflight--
		if err := d.journalErr; err != nil && sum.JournalErr == nil {
			sum.JournalErr = err
			stop(Stop{Reason: "journal", At: clock.Now(), Failures: sum.Failures, Threshold: sum.Threshold,
				Message: fmt.Sprintf("cannot write the journal (%v): no more devices were started", err)})
		}
		sum.Records[d.i] = d.rec
		if d.rec.Outcome.Failed(p.Commit) {
			sum.Failures++
		}
		obs.Finished(d.i, d.rec)
		if d.rec.Outcome.Failed(p.Commit) {
			switch {
			case d.rec.Canary:
				stop(Stop{Reason: "canary_failed", At: clock.Now(), Failures: sum.Failures, Threshold: sum.Threshold, Device: d.rec.Device,
					Message: fmt.Sprintf("canary %s ended %s: no other device was started", d.rec.Device, d.rec.Outcome)})
			case sum.Failures > sum.Threshold:
				stop(Stop{Reason: "max_failures", At: clock.Now(), Failures: sum.Failures, Threshold: sum.Threshold, Device: d.rec.Device,
					Message: fmt.Sprintf("%s failed, more than --max-failures allows (%d): no more devices were started", devices(sum.Failures), sum.Threshold)})
			}
		}
	}
	// await waits for one result, noticing an interruption meanwhile.
	await := func() done {
		select {
		case d := <-results:
			finish(d)
			return d
		case <-ctx.Done():
			interrupted()
			d := <-results
			finish(d)
			return d
		}
	}
	drain := func() {
		for inflight > 0 {
			await()
		}
	}
	// pace waits for the next start MaxPerMinute allows, taking the
	// results that come meanwhile (a failure among them may stop the
	// rollout: then nothing starts).
	pace = func() bool {
		for sum.Stop == nil {
			if p.MaxPerMinute <= 0 || lastStart.IsZero() {
				return true
			}
			gap := time.Duration(float64(time.Minute) / p.MaxPerMinute)
			wait := lastStart.Add(gap).Sub(clock.Now())
			if wait <= 0 {
				return true
			}
			select {
			case <-clock.After(wait):
			case d := <-results:
				finish(d)
			case <-ctx.Done():
				// An interrupt while waiting for the next start stops
				// the rollout (Stop "interrupted"), as one at a start.
				interrupted()
				return false
			}
		}
		return false
	}

	// The canary group: started as Parallel allows, until Canary devices
	// were updated; all must end well.
	next := 0
	if p.Canary > 0 {
		okCount := 0
		for sum.Stop == nil {
			for sum.Stop == nil && next < len(queue) && inflight < p.Parallel && okCount+inflight < p.Canary {
				if !start(queue[next], 0, true) {
					break
				}
				next++
			}
			if inflight == 0 {
				break
			}
			d := await()
			if d.rec.Outcome.Ok(p.Commit) && d.rec.Outcome != Skipped {
				okCount++
			}
			if okCount >= p.Canary {
				break
			}
		}
		drain()
	}

	// The batches.
	rest := queue[next:]
	size := len(rest)
	if p.Batch.IsSet() {
		size = p.Batch.Ceil(len(rest))
	}
	for b := 1; len(rest) > 0 && sum.Stop == nil; b++ {
		n := min(size, len(rest))
		batch := rest[:n]
		rest = rest[n:]
		for k := 0; k < len(batch) && sum.Stop == nil; {
			if inflight < p.Parallel {
				if !start(batch[k], b, false) {
					break
				}
				k++
				continue
			}
			await()
		}
		drain()
	}
	drain()
	for _, rec := range sum.Records {
		sum.Totals[rec.Outcome]++
	}
	if st := sum.Stop; st != nil && st.Reason == "max_failures" && sum.Totals[NotStarted] == 0 {
		// Crossed by the last devices in flight: nothing was held back.
		st.Message = fmt.Sprintf("%s failed, more than --max-failures allows (%d), once every device had been started", devices(st.Failures), st.Threshold)
	}
	return sum
}

// devices is "1 device", "2 devices".
func devices(n int) string {
	if n == 1 {
		return "1 device"
	}
	return fmt.Sprintf("%d devices", n)
}
