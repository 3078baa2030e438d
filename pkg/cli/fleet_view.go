package cli

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/creack/pty"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"

	"github.com/otactl/otactl/pkg/fleet"
)

// fleetLine is the line of one device that finished: name, before → after,
// outcome, duration, and for a failure its reason.
func fleetLine(nameW int, r fleet.Record) string {
	ver := versionChange(r)
	line := fmt.Sprintf("%-*s  %-24s  %-19s  %7s", nameW, r.Device, ver, r.Outcome, fleetDuration(r))
	if !r.Outcome.Ok(false) && r.Outcome != fleet.NotStarted {
		line += "  " + r.Reason
		if r.Message != "" {
			line += ": " + r.Message
		}
	}
	return strings.TrimRight(line, " ")
}

// versionChange is "1.0.0 → 2.0.0" (or the one version when it did not
// change, "?" when unknown).
func versionChange(r fleet.Record) string {
	from, to := r.FromVersion, r.Version
	switch {
	case from == "" && to == "":
		return "?"
	case from == "":
		return "? → " + to
	case to == "":
		return from + " → ?"
	}
	return from + " → " + to
}

func fleetDuration(r fleet.Record) string {
	if r.Started.IsZero() || r.Finished.IsZero() {
		return "-"
	}
	return preciseDuration(r.Duration())
}

func nameWidth(ts []fleet.Target) int {
	w := len("DEVICE")
	for _, t := range ts {
		w = max(w, len(t.Name))
	}
	return min(w, 40)
}

// lineView prints one line per device as it finishes (stderr, not a
// terminal).
type lineView struct {
	w     io.Writer
	nameW int
	total int
	mu    sync.Mutex
	n     int
}

func (v *lineView) Started(int, fleet.Record)    {}
func (v *lineView) Progress(int, fleet.Progress) {}
func (v *lineView) Finished(i int, r fleet.Record) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.n++
	fmt.Fprintf(v.w, "[%*d/%d] %s\n", len(fmt.Sprint(v.total)), v.n, v.total, fleetLine(v.nameW, r))
}
func (v *lineView) Stopped(s fleet.Stop) {
	fmt.Fprintf(v.w, "rollout stopped: %s\n", s.Message)
}

// liveView is the terminal view of a rollout (mpb): one line per device in
// flight with its phase and progress, as many as half the terminal has
// room for, and an overall bar with the counts (naming the last failure)
// and the ETA.
type liveView struct {
	p      *mpb.Progress
	total  *mpb.Bar
	nameW  int
	commit bool
	max    int // device bars at most

	// mu guards the device lines; it may be held while calling mpb, so
	// nothing mpb's drawing calls takes it.
	mu      sync.Mutex
	shown   map[int]*deviceBar
	waiting []int                  // in flight, without a bar
	last    map[int]fleet.Progress // of each device in flight
	names   map[int]string

	// cmu guards the counts the overall bar draws: never held while
	// calling mpb or taking mu.
	cmu      sync.Mutex
	ok, bad  int
	inflight int
	hidden   int
	lastBad  string // the device that failed last, and how
	stopped  string
}

// deviceBar is the line of one device in flight. Its mpb bar never
// completes (its total is one more than the 100 % it can show): mpb ignores
// the removal of a completed bar, so the line of a device that had
// downloaded everything stayed on the screen after it finished.
type deviceBar struct {
	bar   *mpb.Bar
	mu    sync.Mutex
	phase string
	pct   int64
}

const deviceBarTotal = 101

func (d *deviceBar) setPercent(p int64) {
	p = min(max(p, 0), 100)
	d.mu.Lock()
	d.pct = p
	d.mu.Unlock()
	d.bar.SetCurrent(p)
}

func (d *deviceBar) percent() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return fmt.Sprintf("%3d %%", d.pct)
}

func (d *deviceBar) setPhase(s string) {
	d.mu.Lock()
	d.phase = s
	d.mu.Unlock()
}

func (d *deviceBar) getPhase() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.phase
}

// terminalRows is the height of the terminal w is, or 0.
func terminalRows(w io.Writer) int {
	if fh, ok := w.(*os.File); ok {
		if rows, _, err := pty.Getsize(fh); err == nil {
			return rows
		}
	}
	return 0
}

// newLiveView draws on w, width columns wide and rows high (0: unknown).
// refresh, when set, redraws the view at each receive (tests); else it
// redraws itself a few times a second.
func newLiveView(w io.Writer, width, rows int, targets []fleet.Target, toRun int, commit bool, refresh <-chan any) *liveView {
	opts := []mpb.ContainerOption{mpb.WithOutput(w), mpb.WithRefreshRate(150 * time.Millisecond)}
	if width > 0 {
		opts = append(opts, mpb.WithWidth(width))
	}
	if refresh != nil {
		opts = append(opts, mpb.WithManualRefresh(refresh))
	}
	v := &liveView{p: mpb.New(opts...), nameW: nameWidth(targets), commit: commit, shown: map[int]*deviceBar{}, names: map[int]string{}, last: map[int]fleet.Progress{}}
	// Half the terminal at most, 20: the view stays a glance, and what
	// was on the screen before stays in sight above it.
	v.max = 10
	if rows > 0 {
		v.max = max(min((rows-2)/2, 20), 1)
	}
	for i, t := range targets {
		v.names[i] = t.Name
	}
	v.total = v.p.New(int64(toRun), mpb.BarStyle().Lbound("[").Rbound("]"),
		mpb.BarPriority(1<<30), // the overall bar stays at the bottom
		mpb.PrependDecorators(decor.Any(func(decor.Statistics) string { return v.counts() })),
		mpb.AppendDecorators(decor.CountersNoUnit("%d/%d", decor.WCSyncSpace), decor.Name(" "), decor.AverageETA(decor.ET_STYLE_GO)),
	)
	if toRun == 0 {
		v.total.SetTotal(0, true)
	}
	return v
}

// counts is drawn by mpb: it takes cmu only.
func (v *liveView) counts() string {
	v.cmu.Lock()
	defer v.cmu.Unlock()
	s := fmt.Sprintf("ok %d  failed %d  in flight %d", v.ok, v.bad, v.inflight)
	if v.hidden > 0 {
		s += fmt.Sprintf(" (%d not shown)", v.hidden)
	}
	if v.lastBad != "" {
		s += " (last: " + v.lastBad + ")"
	}
	if v.stopped != "" {
		s += "  STOPPED"
	}
	return s
}

// addBar gives device i a line, showing the phase it is in.
func (v *liveView) addBar(i int) {
	d := &deviceBar{phase: "starting"}
	p, seen := v.last[i]
	if seen {
		d.phase = p.Phase
	}
	d.bar = v.p.New(deviceBarTotal, mpb.BarStyle().Lbound("[").Rbound("]"),
		mpb.PrependDecorators(decor.Name(v.names[i], decor.WC{W: v.nameW + 1, C: decor.DindentRight}),
			decor.Any(func(decor.Statistics) string { return d.getPhase() }, decor.WC{W: 13, C: decor.DindentRight})),
		mpb.AppendDecorators(decor.Any(func(decor.Statistics) string { return d.percent() }, decor.WC{W: 5})),
	)
	if seen && p.Total > 0 {
		d.setPercent(p.Done * 100 / p.Total)
	}
	v.shown[i] = d
}

// setCounts updates the counts (with mu held: hidden is len(v.waiting)).
func (v *liveView) setCounts(f func()) {
	v.cmu.Lock()
	defer v.cmu.Unlock()
	f()
	v.hidden = len(v.waiting)
}

func (v *liveView) Started(i int, r fleet.Record) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.shown) < v.max {
		v.addBar(i)
	} else {
		v.waiting = append(v.waiting, i)
	}
	v.setCounts(func() { v.inflight++ })
}

func (v *liveView) Progress(i int, p fleet.Progress) {
	v.mu.Lock()
	if p.Total == 0 { // a phase without bytes keeps the bytes seen last
		prev := v.last[i]
		p.Done, p.Total = prev.Done, prev.Total
	}
	v.last[i] = p
	d := v.shown[i]
	v.mu.Unlock()
	if d == nil {
		return
	}
	d.setPhase(p.Phase)
	if p.Total > 0 {
		d.setPercent(p.Done * 100 / p.Total)
	}
}

func (v *liveView) Finished(i int, r fleet.Record) {
	v.mu.Lock()
	delete(v.last, i)
	if d := v.shown[i]; d != nil {
		d.bar.Abort(true)
		delete(v.shown, i)
		if len(v.waiting) > 0 {
			next := v.waiting[0]
			v.waiting = v.waiting[1:]
			v.addBar(next)
		}
	} else {
		for k, w := range v.waiting {
			if w == i {
				v.waiting = append(v.waiting[:k], v.waiting[k+1:]...)
				break
			}
		}
	}
	v.setCounts(func() {
		v.inflight--
		if r.Outcome.Ok(v.commit) {
			v.ok++
		} else {
			v.bad++
			v.lastBad = fmt.Sprintf("%s %s", r.Device, r.Outcome)
		}
	})
	v.mu.Unlock()
	// No line per finished device above the bars: when more devices finish
	// between two redraws than the terminal has rows, mpb loses count of
	// what it drew and stops redrawing in place. The counts say how many
	// ended well; the last failure is named there; the summary lists all.
	v.total.Increment()
}

func (v *liveView) Stopped(s fleet.Stop) {
	v.cmu.Lock()
	v.stopped = s.Message
	v.cmu.Unlock()
	fmt.Fprintf(v.p, "rollout stopped: %s\n", s.Message)
}

// Close ends the view: the overall bar stays on the screen.
func (v *liveView) Close() {
	v.mu.Lock()
	for i, d := range v.shown {
		d.bar.Abort(true)
		delete(v.shown, i)
	}
	v.mu.Unlock()
	if !v.total.Completed() {
		v.total.Abort(false)
	}
	v.p.Wait()
}

// trimmedLines writes to w with the spaces at the end of each line
// removed (a tabwriter pads the cells of a column, empty last ones too).
// Spaces are held back until something other than a newline follows.
type trimmedLines struct {
	w      io.Writer
	spaces int
}

func (t *trimmedLines) Write(p []byte) (int, error) {
	var b bytes.Buffer
	for _, c := range p {
		switch c {
		case ' ':
			t.spaces++
			continue
		case '\n':
			t.spaces = 0
		default:
			b.WriteString(strings.Repeat(" ", t.spaces))
			t.spaces = 0
		}
		b.WriteByte(c)
	}
	if _, err := t.w.Write(b.Bytes()); err != nil {
		return 0, err
	}
	return len(p), nil
}
