package fleet

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// fakeRunner takes dur per device (on synctest's clock) and ends each with
// the outcome outcomes names (default UpdatedCommitted). It records how
// many ran at once.
type fakeRunner struct {
	dur      func(name string) time.Duration
	outcomes map[string]Outcome

	mu             sync.Mutex
	inflight, peak int
	ran            []string
}

func (f *fakeRunner) Run(ctx context.Context, t Target, progress func(Progress)) Result {
	f.mu.Lock()
	f.inflight++
	f.peak = max(f.peak, f.inflight)
	f.ran = append(f.ran, t.Name)
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.inflight--
		f.mu.Unlock()
	}()
	progress(Progress{Phase: "updating"})
	d := time.Second
	if f.dur != nil {
		d = f.dur(t.Name)
	}
	select {
	case <-time.After(d):
	case <-ctx.Done():
		return Result{Outcome: Unreachable, Reason: "interrupted"}
	}
	o, ok := f.outcomes[t.Name]
	if !ok {
		o = UpdatedCommitted
	}
	return Result{Outcome: o, Reason: string(o)}
}

func targets(n int) []Target {
	ts := make([]Target, n)
	for i := range ts {
		name := fmt.Sprintf("d%03d", i+1)
		ts[i] = Target{Addr: "mqtt://b/" + name, Address: "mqtt://b/" + name, Name: name}
	}
	return ts
}

// order records the observer's calls.
type order struct {
	mu       sync.Mutex
	started  map[string]time.Time
	finished map[string]time.Time
	stops    []Stop
}

func newOrder() *order {
	return &order{started: map[string]time.Time{}, finished: map[string]time.Time{}}
}
func (o *order) Started(i int, r Record) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.started[r.Device] = r.Started
}
func (o *order) Progress(int, Progress) {}
func (o *order) Finished(i int, r Record) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.finished[r.Device] = r.Finished
}
func (o *order) Stopped(s Stop) { o.stops = append(o.stops, s) }

func TestRolloutAllGood(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeRunner{}
		obs := newOrder()
		r := &Rollout{Plan: Plan{Parallel: 4, Canary: 1, Commit: true}, Targets: targets(10), Runner: f, Observer: obs}
		t0 := time.Now()
		sum := r.Run(t.Context(), t.Context())
		if !sum.Ok(true) || sum.Totals[UpdatedCommitted] != 10 || sum.Ran != 10 {
			t.Fatalf("summary %+v", sum)
		}
		if f.peak != 4 {
			t.Errorf("peak in flight %d, want 4 (--parallel)", f.peak)
		}
		// The canary alone (1 s), then 9 devices 4 at a time: 3 s.
		if got := time.Since(t0); got != 4*time.Second {
			t.Errorf("took %v, want 4s", got)
		}
		for _, rec := range sum.Records[1:] {
			if rec.Started.Before(sum.Records[0].Finished) {
				t.Errorf("%s started at %v, before the canary ended (%v)", rec.Device, rec.Started, sum.Records[0].Finished)
			}
		}
		if !sum.Records[0].Canary || sum.Records[1].Canary || sum.Records[1].Batch != 1 {
			t.Errorf("canary/batch marks: %+v %+v", sum.Records[0], sum.Records[1])
		}
	})
}

func TestRolloutCanaryFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeRunner{outcomes: map[string]Outcome{"d002": RolledBack}}
		obs := newOrder()
		r := &Rollout{Plan: Plan{Parallel: 5, Canary: 3, MaxFailures: Size{N: 100, set: true}}, Targets: targets(10), Runner: f, Observer: obs}
		sum := r.Run(t.Context(), t.Context())
		if sum.Stop == nil || sum.Stop.Reason != "canary_failed" || sum.Stop.Device != "d002" {
			t.Fatalf("stop %+v, want canary_failed on d002 (whatever --max-failures)", sum.Stop)
		}
		// The three canaries ran together; nothing else started.
		if len(f.ran) != 3 || sum.Totals[NotStarted] != 7 || sum.Ran != 3 {
			t.Errorf("ran %v, totals %v", f.ran, sum.Totals)
		}
		if sum.Ok(false) {
			t.Error("a failed canary is not ok")
		}
	})
}

// Skipped devices (already on the build) prove nothing: the canary group
// is made of devices that were updated.
func TestRolloutCanarySkipsDoNotCount(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeRunner{outcomes: map[string]Outcome{"d001": Skipped, "d002": Skipped}}
		r := &Rollout{Plan: Plan{Parallel: 1, Canary: 1}, Targets: targets(5), Runner: f}
		sum := r.Run(t.Context(), t.Context())
		for i, want := range []bool{true, true, true, false, false} {
			if sum.Records[i].Canary != want {
				t.Errorf("device %d canary %v, want %v", i+1, sum.Records[i].Canary, want)
			}
		}
		if !sum.Ok(false) || sum.Totals[Skipped] != 2 {
			t.Errorf("summary %+v", sum.Totals)
		}
	})
}

// Issue 8: exceeding --max-failures stops starting devices; those in
// flight finish; no device starts after the rollout learnt of the failure
// that crossed the threshold.
func TestRolloutMaxFailures(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		bad := map[string]Outcome{}
		for _, n := range []string{"d005", "d009", "d012", "d013", "d020"} {
			bad[n] = NotApplied
		}
		f := &fakeRunner{outcomes: bad, dur: func(name string) time.Duration {
			var k int
			fmt.Sscanf(name, "d%d", &k)
			return time.Duration(500+97*(k%7)) * time.Millisecond // uneven: devices finish out of order
		}}
		obs := newOrder()
		r := &Rollout{Plan: Plan{Parallel: 4, Canary: 1, MaxFailures: Size{Percent: 10, IsPct: true, set: true}}, Targets: targets(30), Runner: f, Observer: obs}
		sum := r.Run(t.Context(), t.Context())
		if sum.Threshold != 3 {
			t.Fatalf("threshold %d, want 3 (10%% of 30)", sum.Threshold)
		}
		if sum.Stop == nil || sum.Stop.Reason != "max_failures" || sum.Stop.Failures != 4 {
			t.Fatalf("stop %+v, want max_failures at the 4th failure", sum.Stop)
		}
		for _, rec := range sum.Records {
			if !rec.Started.IsZero() && rec.Started.After(sum.Stop.At) {
				t.Errorf("%s started at %v, after the rollout stopped at %v", rec.Device, rec.Started, sum.Stop.At)
			}
			if !rec.Started.IsZero() && rec.Outcome == NotStarted {
				t.Errorf("%s started but has no outcome: in-flight devices must finish", rec.Device)
			}
		}
		if sum.Totals[NotStarted] == 0 || sum.Totals[NotStarted]+sum.Ran != 30 {
			t.Errorf("totals %v, ran %d", sum.Totals, sum.Ran)
		}
		if len(obs.stops) != 1 {
			t.Errorf("observer saw %d stops", len(obs.stops))
		}
	})
}

// Batches: a batch starts when the one before it has finished.
func TestRolloutBatches(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeRunner{dur: func(name string) time.Duration {
			if name == "d003" {
				return 5 * time.Second // holds its batch
			}
			return time.Second
		}}
		r := &Rollout{Plan: Plan{Parallel: 10, Batch: Size{Percent: 30, IsPct: true, set: true}}, Targets: targets(10), Runner: f}
		sum := r.Run(t.Context(), t.Context())
		// No canary: batches of ceil(30% of 10) = 3: 1-3, 4-6, 7-9, 10.
		want := []int{1, 1, 1, 2, 2, 2, 3, 3, 3, 4}
		for i, rec := range sum.Records {
			if rec.Batch != want[i] {
				t.Errorf("%s in batch %d, want %d", rec.Device, rec.Batch, want[i])
			}
		}
		for _, rec := range sum.Records[3:] {
			if rec.Started.Before(sum.Records[2].Finished) {
				t.Errorf("%s (batch %d) started before batch 1 ended", rec.Device, rec.Batch)
			}
		}
		if f.peak != 3 {
			t.Errorf("peak %d, want 3 (a batch)", f.peak)
		}
	})
}

// --max-per-minute spaces the starts (AWS IoT Jobs' maximumPerMinute).
func TestRolloutMaxPerMinute(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeRunner{dur: func(string) time.Duration { return 100 * time.Millisecond }}
		r := &Rollout{Plan: Plan{Parallel: 8, MaxPerMinute: 30}, Targets: targets(6), Runner: f}
		t0 := time.Now()
		sum := r.Run(t.Context(), t.Context())
		for i, rec := range sum.Records {
			if got, want := rec.Started.Sub(t0), time.Duration(i)*2*time.Second; got != want {
				t.Errorf("%s started at +%v, want +%v", rec.Device, got, want)
			}
		}
	})
}

// A failure that arrives while the rollout waits for its next start slot
// stops it before that start.
func TestRolloutMaxPerMinuteStopsWhileWaiting(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeRunner{outcomes: map[string]Outcome{"d001": RolledBack}, dur: func(string) time.Duration { return time.Second }}
		r := &Rollout{Plan: Plan{Parallel: 8, MaxPerMinute: 6}, Targets: targets(4), Runner: f}
		sum := r.Run(t.Context(), t.Context())
		if sum.Ran != 1 || sum.Stop == nil || sum.Stop.Reason != "max_failures" {
			t.Fatalf("ran %d, stop %+v", sum.Ran, sum.Stop)
		}
	})
}

// The first Ctrl-C (ctx) stops starting devices, in-flight ones finish;
// the second (hard) ends them.
func TestRolloutInterrupted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		f := &fakeRunner{dur: func(string) time.Duration { return 10 * time.Second }}
		r := &Rollout{Plan: Plan{Parallel: 3}, Targets: targets(9), Runner: f}
		time.AfterFunc(5*time.Second, cancel)
		t0 := time.Now()
		sum := r.Run(ctx, t.Context())
		if sum.Stop == nil || sum.Stop.Reason != "interrupted" || !sum.Stop.At.Equal(t0.Add(5*time.Second)) {
			t.Fatalf("stop %+v", sum.Stop)
		}
		if sum.Ran != 3 || sum.Totals[UpdatedCommitted] != 3 || sum.Totals[NotStarted] != 6 {
			t.Errorf("ran %d, totals %v: the three in flight finish", sum.Ran, sum.Totals)
		}

		hardCtx, hardCancel := context.WithCancel(t.Context())
		ctx2, cancel2 := context.WithCancel(t.Context())
		time.AfterFunc(time.Second, cancel2)
		time.AfterFunc(2*time.Second, hardCancel)
		t0 = time.Now()
		sum = r.Run(ctx2, hardCtx)
		if time.Since(t0) != 2*time.Second || sum.Totals[Unreachable] != 3 {
			t.Errorf("second interrupt: took %v, totals %v", time.Since(t0), sum.Totals)
		}
	})
}

// An interrupt that comes while the rollout waits for its next start slot
// (--max-per-minute) stops it as "interrupted", like one at a start: the
// summary must not read as a rollout that ended by itself.
func TestRolloutInterruptedWhileWaiting(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		f := &fakeRunner{dur: func(string) time.Duration { return time.Second }}
		r := &Rollout{Plan: Plan{Parallel: 8, MaxPerMinute: 1}, Targets: targets(3), Runner: f}
		time.AfterFunc(5*time.Second, cancel)
		sum := r.Run(ctx, t.Context())
		if sum.Stop == nil || sum.Stop.Reason != "interrupted" {
			t.Fatalf("stop %+v, want interrupted", sum.Stop)
		}
		if sum.Ran != 1 || sum.Totals[UpdatedCommitted] != 1 || sum.Totals[NotStarted] != 2 {
			t.Errorf("ran %d, totals %v", sum.Ran, sum.Totals)
		}
	})
}

// A resumed rollout counts the devices the journal shows updated towards
// its canary group: with the canaries proven by the first run, a failure
// of the first device it starts now counts against --max-failures, not as
// a failed canary that stops everything.
func TestRolloutResumedCanaryProven(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeRunner{outcomes: map[string]Outcome{"d003": RolledBack}}
		done := map[int]Record{
			0: {Device: "d001", Result: Result{Outcome: UpdatedCommitted}},
			1: {Device: "d002", Result: Result{Outcome: UpdatedCommitted}},
		}
		r := &Rollout{Plan: Plan{Parallel: 1, Canary: 2, Commit: true, MaxFailures: Size{N: 100, set: true}},
			Targets: targets(6), Runner: f, Done: done}
		sum := r.Run(t.Context(), t.Context())
		if sum.Stop != nil {
			t.Fatalf("stop %+v: the canaries were proven by the journal", sum.Stop)
		}
		if sum.Ran != 4 || sum.Totals[RolledBack] != 1 || sum.Totals[UpdatedCommitted] != 5 {
			t.Errorf("ran %d, totals %v", sum.Ran, sum.Totals)
		}
		// With only one of two canaries proven, one canary is still due.
		r.Done = map[int]Record{0: done[0]}
		f.outcomes = map[string]Outcome{"d002": RolledBack}
		sum = r.Run(t.Context(), t.Context())
		if sum.Stop == nil || sum.Stop.Reason != "canary_failed" || sum.Stop.Device != "d002" {
			t.Fatalf("stop %+v, want canary_failed on d002", sum.Stop)
		}
	})
}

// A threshold crossed once every device had been started held nothing
// back: the message says so, and does not claim devices were not started.
func TestRolloutThresholdCrossedAfterTheLastStart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeRunner{outcomes: map[string]Outcome{"d004": RolledBack}}
		r := &Rollout{Plan: Plan{Parallel: 4}, Targets: targets(4), Runner: f}
		sum := r.Run(t.Context(), t.Context())
		if sum.Stop == nil || sum.Stop.Reason != "max_failures" || sum.Totals[NotStarted] != 0 {
			t.Fatalf("stop %+v, totals %v", sum.Stop, sum.Totals)
		}
		if strings.Contains(sum.Stop.Message, "no more devices were started") || !strings.Contains(sum.Stop.Message, "every device had been started") {
			t.Errorf("message %q", sum.Stop.Message)
		}
	})
}
