package cli

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// progressBar draws a one-line bar on a terminal (stderr): bytes, speed and
// ETA, or a percentage when only that is known. It draws nothing when
// disabled (not a TTY, --json), so callers use it unconditionally.
type progressBar struct {
	w       io.Writer
	enabled bool
	now     func() time.Time
	label   string
	// width returns the terminal's width in columns (0: unknown). A line
	// as wide as the terminal wraps, and "\r" then redraws only its last
	// row, leaving the others on the screen: lines are cut to width-1.
	width func() int

	mu       sync.Mutex
	start    time.Time
	lastDraw time.Time
	drawn    bool
}

func newProgressBar(w io.Writer, enabled bool, label string) *progressBar {
	return &progressBar{w: w, enabled: enabled, now: time.Now, label: label}
}

// Bytes shows sent of total bytes.
func (p *progressBar) Bytes(sent, total int64) {
	if !p.enabled {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	if p.start.IsZero() {
		p.start = now
	}
	if sent < total && now.Sub(p.lastDraw) < 100*time.Millisecond {
		return
	}
	p.lastDraw = now
	pct := 0.0
	if total > 0 {
		pct = float64(sent) / float64(total)
	}
	elapsed := now.Sub(p.start).Seconds()
	speed := ""
	eta := ""
	if elapsed > 0.2 && sent > 0 {
		bps := float64(sent) / elapsed
		speed = humanBytes(int64(bps)) + "/s"
		if sent < total {
			eta = "ETA " + humanDuration(time.Duration(float64(total-sent)/bps*float64(time.Second)))
		}
	}
	p.draw(bar(pct, 24), fmt.Sprintf("%3.0f%% %s/%s %s %s", pct*100,
		humanBytes(sent), humanBytes(total), speed, eta))
}

// Percent shows a percentage reported by the device.
func (p *progressBar) Percent(pct int) {
	if !p.enabled {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.draw(bar(float64(pct)/100, 24), fmt.Sprintf("%3d%%", pct))
}

// draw writes the label, the bar graphic and the numbers. On a terminal
// too narrow for all of it, the graphic goes first, then the end of the
// numbers.
func (p *progressBar) draw(graphic, numbers string) {
	line := strings.TrimRight(p.label+" "+graphic+" "+numbers, " ")
	if p.width != nil {
		if w := p.width(); w > 1 && len([]rune(line)) > w-1 {
			line = strings.TrimRight(p.label+" "+numbers, " ")
			if r := []rune(line); len(r) > w-1 {
				line = strings.TrimRight(string(r[:w-1]), " ")
			}
		}
	}
	fmt.Fprintf(p.w, "\r\033[K%s", line)
	p.drawn = true
}

// Done ends the bar's line, so that the next output starts clean.
func (p *progressBar) Done() {
	if !p.enabled {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
		p.drawn = false
	}
}

func bar(frac float64, width int) string {
	if frac < 0 {
		frac = 0
	}
	if frac > 1 {
		frac = 1
	}
	n := int(frac * float64(width))
	return "[" + strings.Repeat("=", n) + strings.Repeat(" ", width-n) + "]"
}

// newProgressBar returns a bar on stderr, drawn only on a terminal, and
// neither with --json nor with --verbose (whose log lines would run into
// it).
func (f *Factory) newProgressBar(label string) *progressBar {
	p := newProgressBar(f.IO.ErrOut, f.IO.ErrTTY && !f.G.JSON && !f.G.Verbose, label)
	p.width = f.IO.ErrWidth
	return p
}
