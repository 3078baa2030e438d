package emulator

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"

	"github.com/otactl/otactl/pkg/transport/serial"
)

// uartQueueLen is how many log lines wait for the serial link before new
// ones are dropped (a firmware's UART buffer overflows the same way when
// the host holds it off with XOFF for long).
const uartQueueLen = 256

// uartQueue carries log lines to a serial link from one goroutine, so that
// the device never waits for the link to log.
type uartQueue struct {
	lines chan string
	quit  chan struct{}
	done  chan struct{}
}

func startUARTQueue(srv *serial.Server) *uartQueue {
	q := &uartQueue{lines: make(chan string, uartQueueLen), quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(q.done)
		for {
			select {
			case line := <-q.lines:
				srv.Log(line) // returns once the server is closed
			case <-q.quit:
				return
			}
		}
	}()
	return q
}

// put queues line, or drops it when the queue is full.
func (q *uartQueue) put(line string) {
	select {
	case q.lines <- line:
	default:
	}
}

// stop ends the queue's goroutine once the line it writes (if any) is
// done; close the server after stop so that such a write ends.
func (q *uartQueue) stop() { close(q.quit) }

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
		l.Log(uartLine(r, h.attrs))
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

// uartLine formats a record as one device log line (no line end).
func uartLine(r slog.Record, attrs []slog.Attr) string {
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
