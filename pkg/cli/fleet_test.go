package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/otactl/otactl/pkg/fleet"
)

// The first interrupt ends the command's context (Main); the hard context
// of the devices in flight ends only at the second.
func TestFleetSecondInterrupt(t *testing.T) {
	ch := make(chan chan<- os.Signal, 1)
	f := &Factory{notifySignals: func(c chan<- os.Signal) { ch <- c }}
	ctx, cancel := context.WithCancel(t.Context())
	hard, stop := f.interrupts(ctx)
	defer stop()
	sig := <-ch
	sig <- os.Interrupt
	cancel()
	select {
	case <-hard.Done():
		t.Fatal("the first interrupt ended the devices in flight")
	case <-time.After(50 * time.Millisecond):
	}
	sig <- os.Interrupt
	select {
	case <-hard.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the second interrupt did not end the devices in flight")
	}
}

func TestFleetExit(t *testing.T) {
	rec := func(o fleet.Outcome, code int) fleet.Record {
		return fleet.Record{Result: fleet.Result{Outcome: o, ExitCode: code}}
	}
	for _, tc := range []struct {
		name string
		recs []fleet.Record
		stop *fleet.Stop
		want int
	}{
		{"all committed", []fleet.Record{rec(fleet.UpdatedCommitted, 0), rec(fleet.Skipped, 0)}, nil, 0},
		{"uncommitted under --commit", []fleet.Record{rec(fleet.UpdatedCommitted, 0), rec(fleet.UpdatedUncommitted, 6)}, nil, 6},
		{"one rolled back", []fleet.Record{rec(fleet.UpdatedCommitted, 0), rec(fleet.RolledBack, 6)}, nil, 6},
		{"nothing reached", []fleet.Record{rec(fleet.Unreachable, 5), rec(fleet.NotStarted, 0)}, &fleet.Stop{Reason: "canary_failed"}, 5},
		{"broker refused", []fleet.Record{rec(fleet.NotApplied, 4), rec(fleet.NotApplied, 4)}, nil, 4},
		{"unreachable after updates", []fleet.Record{rec(fleet.UpdatedCommitted, 0), rec(fleet.Unreachable, 5)}, nil, 6},
		{"mixed failures", []fleet.Record{rec(fleet.Unreachable, 5), rec(fleet.RolledBack, 6)}, nil, 6},
		{"stopped, all started ok", []fleet.Record{rec(fleet.UpdatedCommitted, 0), rec(fleet.NotStarted, 0)}, &fleet.Stop{Reason: "max_failures"}, 6},
		{"interrupted", []fleet.Record{rec(fleet.UpdatedCommitted, 0), rec(fleet.NotStarted, 0)}, &fleet.Stop{Reason: "interrupted"}, 1},
	} {
		sum := &fleet.Summary{Records: tc.recs, Stop: tc.stop}
		if got := fleetExit(sum, true); got != tc.want {
			t.Errorf("%s: exit %d, want %d", tc.name, got, tc.want)
		}
	}
}

// The live view draws device lines and the overall bar, and prints each
// finished device above them.
func TestFleetLiveView(t *testing.T) {
	var buf strings.Builder
	refresh := make(chan any)
	ts := []fleet.Target{{Name: "dev-0001"}, {Name: "dev-0002"}, {Name: "dev-0003"}}
	v := newLiveView(&buf, 100, 0, ts, 3, true, refresh)
	v.Started(0, fleet.Record{Device: "dev-0001"})
	v.Started(1, fleet.Record{Device: "dev-0002"})
	v.Progress(0, fleet.Progress{Phase: "downloading", Done: 50, Total: 100})
	for range 3 { // the view draws at each; the third waits for the first to be drawn
		refresh <- nil
	}
	v.Finished(0, fleet.Record{Device: "dev-0001", Result: fleet.Result{Outcome: fleet.UpdatedCommitted, FromVersion: "1.0.0", Version: "2.0.0"}})
	v.Finished(1, fleet.Record{Device: "dev-0002", Result: fleet.Result{Outcome: fleet.RolledBack, Reason: "rolled_back", FromVersion: "1.0.0", Version: "1.0.0"}})
	v.Stopped(fleet.Stop{Message: "2 devices failed"})
	v.Close()
	out := buf.String()
	for _, want := range []string{"dev-0001", "downloading", "50 %", "ok 0  failed 0  in flight 2",
		"(last: dev-0002 rolled-back)", "rollout stopped: 2 devices failed", "STOPPED", "2/3"} {
		if !strings.Contains(out, want) {
			t.Errorf("live view lacks %q:\n%s", want, out)
		}
	}
}

// A device in flight without a line of its own (more in flight than the
// terminal has rows) keeps its phase: when a line frees up, it shows the
// phase the device is in, not "starting".
func TestFleetLiveViewHiddenDeviceKeepsItsPhase(t *testing.T) {
	var buf syncBuffer
	refresh := make(chan any)
	ts := []fleet.Target{{Name: "dev-0001"}, {Name: "dev-0002"}}
	v := newLiveView(&buf, 100, 5, ts, 2, true, refresh) // 5 rows: one device line
	v.Started(0, fleet.Record{Device: "dev-0001"})
	v.Started(1, fleet.Record{Device: "dev-0002"})
	v.Progress(1, fleet.Progress{Phase: "downloading", Done: 30, Total: 100})
	v.Progress(1, fleet.Progress{Phase: "rebooting"})
	v.Finished(0, fleet.Record{Device: "dev-0001", Result: fleet.Result{Outcome: fleet.UpdatedCommitted, FromVersion: "1.0.0", Version: "2.0.0"}})
	for range 3 {
		refresh <- nil
	}
	out := buf.String()
	v.Finished(1, fleet.Record{Device: "dev-0002", Result: fleet.Result{Outcome: fleet.UpdatedCommitted, FromVersion: "1.0.0", Version: "2.0.0"}})
	v.Close()
	if !strings.Contains(out, "rebooting") {
		t.Errorf("dev-0002's line does not show its phase:\n%s", out)
	}
}

// The view never waits for mpb while holding what mpb's drawing needs:
// devices started and finished while the view redraws (more devices than
// lines, so a finished device's line goes to one waiting) must not block
// the rollout. (It did: Finished held the view's lock while mpb added a
// bar, and mpb's drawing of the counts waited for that lock.)
func TestFleetLiveViewDoesNotBlockTheRollout(t *testing.T) {
	const n = 300
	ts := make([]fleet.Target, n)
	for i := range ts {
		ts[i] = fleet.Target{Name: fmt.Sprintf("dev-%04d", i+1)}
	}
	refresh := make(chan any)
	v := newLiveView(io.Discard, 100, 6, ts, n, true, refresh)
	stop := make(chan struct{})
	drawn := make(chan struct{})
	go func() { // redraws as fast as mpb takes them
		defer close(drawn)
		for {
			select {
			case refresh <- nil:
			case <-stop:
				return
			}
		}
	}()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range n {
			v.Started(i, fleet.Record{Device: ts[i].Name})
			v.Progress(i, fleet.Progress{Phase: "downloading", Done: 1, Total: 2})
			if i >= 10 {
				v.Finished(i-10, fleet.Record{Device: ts[i-10].Name, Result: fleet.Result{Outcome: fleet.UpdatedCommitted}})
			}
		}
		for i := n - 10; i < n; i++ {
			v.Finished(i, fleet.Record{Device: ts[i].Name, Result: fleet.Result{Outcome: fleet.UpdatedCommitted}})
		}
	}()
	select {
	case <-done:
	case <-time.After(time.Minute): // the loop takes milliseconds; a minute is a deadlock
		t.Fatal("the live view blocked the rollout (deadlock between the view's lock and mpb's drawing)")
	}
	close(stop)
	<-drawn
	v.Close()
}

// The tables end their lines without the padding of empty last cells.
func TestTrimmedLines(t *testing.T) {
	var b strings.Builder
	w := &trimmedLines{w: &b}
	for _, s := range []string{"dev-1  yes", "  ", "", "\n", "dev-2  no  ", " 3m\n", "a   \n"} {
		w.Write([]byte(s))
	}
	if want := "dev-1  yes\ndev-2  no   3m\na\n"; b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
}

// On a terminal the view redraws in place (cursor up), also after many
// devices finished between two redraws. (A device's bar that reached 100 %
// was complete for mpb, which then ignored its removal when the device
// finished: the bars piled up past the terminal's height, and from then on
// every redraw scrolled the screen.)
func TestFleetLiveViewRedrawsInPlaceAfterABurst(t *testing.T) {
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Skipf("no pty: %v", err)
	}
	defer ptmx.Close()
	defer tty.Close()
	if err := pty.Setsize(tty, &pty.Winsize{Rows: 24, Cols: 100}); err != nil {
		t.Fatal(err)
	}
	var out syncBuffer
	copied := make(chan struct{})
	go func() { io.Copy(&out, ptmx); close(copied) }()

	const n = 120
	ts := make([]fleet.Target, n)
	for i := range ts {
		ts[i] = fleet.Target{Name: fmt.Sprintf("dev-%04d", i+1)}
	}
	refresh := make(chan any)
	v := newLiveView(tty, 100, 24, ts, n, true, refresh)
	for i := range n {
		v.Started(i, fleet.Record{Device: ts[i].Name})
		// Downloaded: the device's bar is full while it reboots.
		v.Progress(i, fleet.Progress{Phase: "rebooting", Done: 100, Total: 100})
	}
	refresh <- nil
	for i := range 60 { // a burst: 60 finish between two redraws
		v.Finished(i, fleet.Record{Device: ts[i].Name, Result: fleet.Result{Outcome: fleet.UpdatedCommitted}})
	}
	refresh <- nil
	mark := len(out.String())
	for range 3 {
		refresh <- nil
	}
	for i := 60; i < n; i++ { // then one by one, redrawn every 5
		v.Finished(i, fleet.Record{Device: ts[i].Name, Result: fleet.Result{Outcome: fleet.UpdatedCommitted}})
		if i%5 == 0 {
			refresh <- nil
		}
	}
	v.Close() // the last frame: what stays on the screen
	tty.Close()
	<-copied
	drawn := out.String()
	after := drawn[mark:]
	if !regexp.MustCompile(`\x1b\[\d+A`).MatchString(after) {
		t.Errorf("after the burst the view no longer redraws in place (no cursor up):\n%q", after)
	}
	// The last frame: every device finished. mpb draws a removed bar one
	// last time, so the lines of the devices that finished since the
	// last redraw may show, no more (with the bug: every device that had
	// downloaded, a hundred lines).
	ups := regexp.MustCompile(`\x1b\[\d+A`).FindAllStringIndex(drawn, -1)
	if last := drawn[ups[len(ups)-1][1]:]; strings.Count(last, "dev-") > 2*v.max+5 {
		t.Errorf("the bars of finished devices are still drawn (%d lines):\n%s", strings.Count(last, "dev-"), last)
	}
}
