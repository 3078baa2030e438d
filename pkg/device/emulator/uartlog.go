package emulator

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/otactl/otactl/pkg/transport/serial"
)

// uartQueueLen is how many log lines wait for the serial link before new
// ones are dropped (a firmware's UART buffer overflows the same way when
// the host holds it off with XOFF for long).
const uartQueueLen = 256

// uartWriteWait is how long Log waits for its line to be written. Within
// it, a line logged before a reply goes out before the reply, as on a
// device's UART; a link that nobody reads (a pty whose buffer is full)
// makes Log stop waiting until the link has taken the queue again.
const uartWriteWait = 50 * time.Millisecond

// uartDrainWait bounds how long a reboot waits for the queued log lines
// to go out (only a link that nobody reads holds them up).
const uartDrainWait = 200 * time.Millisecond

type uartLine struct {
	text    string
	written chan struct{}
}

// uartQueue carries log lines to a serial link from one goroutine, so that
// the device never waits long for the link to log.
type uartQueue struct {
	lines chan uartLine
	quit  chan struct{}
	done  chan struct{}
	// stuck is set when a line was not written within uartWriteWait, and
	// cleared when the queue is empty again.
	stuck atomic.Bool
}

func startUARTQueue(srv *serial.Server) *uartQueue {
	q := &uartQueue{lines: make(chan uartLine, uartQueueLen), quit: make(chan struct{}), done: make(chan struct{})}
	write := func(l uartLine) {
		srv.Log(l.text) // returns once the server is closed
		close(l.written)
		if len(q.lines) == 0 {
			q.stuck.Store(false)
		}
	}
	go func() {
		defer close(q.done)
		for {
			select {
			case l := <-q.lines:
				write(l)
			case <-q.quit:
				for {
					select {
					case l := <-q.lines:
						write(l)
					default:
						return
					}
				}
			}
		}
	}()
	return q
}

// put queues line and waits, up to uartWriteWait, for it to be written;
// a full queue drops it.
func (q *uartQueue) put(line string) {
	l := uartLine{text: line, written: make(chan struct{})}
	select {
	case q.lines <- l:
	default:
		q.stuck.Store(true)
		return
	}
	if q.stuck.Load() {
		return
	}
	t := time.NewTimer(uartWriteWait)
	defer t.Stop()
	select {
	case <-l.written:
	case <-t.C:
		q.stuck.Store(true)
	}
}

// stop ends the queue's goroutine once the lines queued so far are
// written, as a firmware flushes its UART before it reboots, or after
// uartDrainWait when the link does not take them; close the server after
// stop so that a write still waiting ends.
func (q *uartQueue) stop() {
	close(q.quit)
	t := time.NewTimer(uartDrainWait)
	defer t.Stop()
	select {
	case <-q.done:
	case <-t.C:
	}
}

// wait waits for the goroutine to end.
func (q *uartQueue) wait() { <-q.done }

// uartHandler is the device's slog handler: every record goes to the
// configured handler (Config.Logger) as before, and records at Info and
// above are also printed on the device's serial link between frames, the
// way Mongoose OS firmware logs on its UART (docs/emulator.md, "Device log
// on the serial link"):
//
//	[Dec  1 03:52:25.123] update applied slot=1
type uartHandler struct {
	next  slog.Handler
	uart  *atomic.Pointer[SerialListener]
	attrs []slog.Attr
}

func (h *uartHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo || h.next.Enabled(ctx, l)
}

func (h *uartHandler) Handle(ctx context.Context, r slog.Record) error {
	if l := h.uart.Load(); l != nil && r.Level >= slog.LevelInfo {
		l.Log(formatUARTLine(r, h.attrs))
	}
	if h.next.Enabled(ctx, r.Level) {
		return h.next.Handle(ctx, r)
	}
	return nil
}

func (h *uartHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.next = h.next.WithAttrs(attrs)
	c.attrs = append(append([]slog.Attr(nil), h.attrs...), attrs...)
	return &c
}

func (h *uartHandler) WithGroup(name string) slog.Handler {
	c := *h
	c.next = h.next.WithGroup(name)
	return &c
}

// formatUARTLine formats a record as one device log line (no line end).
func formatUARTLine(r slog.Record, attrs []slog.Attr) string {
	var b strings.Builder
	b.WriteString("[")
	b.WriteString(r.Time.Format("Jan _2 15:04:05.000"))
	b.WriteString("] ")
	b.WriteString(r.Message)
	add := func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	}
	for _, a := range attrs {
		add(a)
	}
	r.Attrs(add)
	// One record, one line: a value holding a line end must not start
	// what looks like another line (or a frame) on the link.
	return strings.NewReplacer("\r", `\r`, "\n", `\n`).Replace(b.String())
}
