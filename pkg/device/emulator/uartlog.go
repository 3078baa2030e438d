package emulator

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/otactl/otactl/pkg/transport/serial"
)

// uartQueueLen is how many log lines wait for the serial link before new
// ones are dropped (a firmware's UART buffer overflows the same way when
// the host holds it off with XOFF for long).
const uartQueueLen = 256

// uartRoom is how many bytes may wait unread in the pty for a log line
// still to be written at once: below the 4 KiB a pty's reader side holds,
// so that such a write never blocks (Linux keeps the rest of what a
// writer sends in buffers that fill only once those 4 KiB are full).
const uartRoom = 2048

// uartDrainWait bounds how long a reboot waits for the queued log lines
// to go out (only a link that nobody reads holds them up).
const uartDrainWait = 200 * time.Millisecond

// ptyRoom returns whether a log line can be written to the pty master
// without waiting for its reader (nil: always, for a link that is not a
// pty).
func ptyRoom(master io.ReadWriteCloser) func() bool {
	p, ok := master.(interface{ Unread() (int, error) })
	if !ok {
		return nil
	}
	return func() bool {
		n, err := p.Unread()
		return err == nil && n < uartRoom
	}
}

// uartQueue writes log lines to a serial link: at once while the link has
// room, else through a queue that one goroutine writes out, so that the
// device never waits for the link to log, and lines keep their order.
type uartQueue struct {
	srv  *serial.Server
	room func() bool // nil: always room

	mu      sync.Mutex // serialises the lines' writes
	pending int        // lines queued and not yet written
	lines   chan string
	quit    chan struct{}
	done    chan struct{}
}

func startUARTQueue(srv *serial.Server, room func() bool) *uartQueue {
	q := &uartQueue{srv: srv, room: room, lines: make(chan string, uartQueueLen), quit: make(chan struct{}), done: make(chan struct{})}
	write := func(line string) {
		srv.Log(line) // returns once the server is closed
		q.mu.Lock()
		q.pending--
		q.mu.Unlock()
	}
	go func() {
		defer close(q.done)
		for {
			select {
			case line := <-q.lines:
				write(line)
			case <-q.quit:
				for {
					select {
					case line := <-q.lines:
						write(line)
					default:
						return
					}
				}
			}
		}
	}()
	return q
}

// put writes line at once when nothing is queued and the host does not
// hold output off: then the link takes it without waiting (uartTX), or it
// is dropped when nobody reads the port. Otherwise it queues the line, or
// drops it when the queue is full.
func (q *uartQueue) put(line string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.pending == 0 && !q.srv.Paused() {
		if q.room == nil || q.room() {
			q.srv.Log(line)
		}
		return
	}
	select {
	case q.lines <- line:
		q.pending++
	default:
	}
}

// uartTXSize is how many bytes the device's transmit buffer holds while
// the port's reader catches up; more is dropped, as a UART's FIFO
// overflows.
const uartTXSize = 16 << 10

// uartTX is the device end of an emulated serial link as its transmit
// buffer: Write never waits for the port's reader (a pty whose reader
// stopped reading blocks its writer once its buffers are full, where a
// device's UART goes on transmitting); a goroutine writes the buffer out
// in order. Read and Close are the link's.
type uartTX struct {
	rwc io.ReadWriteCloser

	mu   sync.Mutex
	buf  []byte
	err  error // the write error that ended the link
	kick chan struct{}

	closeOnce sync.Once
	closing   chan struct{}
	done      chan struct{}
}

func newUARTTX(rwc io.ReadWriteCloser) *uartTX {
	t := &uartTX{rwc: rwc, kick: make(chan struct{}, 1), closing: make(chan struct{}), done: make(chan struct{})}
	go t.loop()
	return t
}

func (t *uartTX) Read(p []byte) (int, error) { return t.rwc.Read(p) }

// Write queues p whole, or drops it whole when the buffer is full.
func (t *uartTX) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.err != nil {
		return 0, t.err
	}
	if len(t.buf)+len(p) <= uartTXSize {
		t.buf = append(t.buf, p...)
		select {
		case t.kick <- struct{}{}:
		default:
		}
	}
	return len(p), nil
}

func (t *uartTX) loop() {
	defer close(t.done)
	for {
		select {
		case <-t.kick:
		case <-t.closing:
			return
		}
		for {
			t.mu.Lock()
			b := t.buf
			t.buf = nil
			t.mu.Unlock()
			if len(b) == 0 {
				break
			}
			if _, err := t.rwc.Write(b); err != nil {
				t.mu.Lock()
				t.err = err
				t.mu.Unlock()
				return
			}
		}
	}
}

// Close closes the link (which ends a write in progress) and waits for
// the goroutine.
func (t *uartTX) Close() error {
	var err error
	t.closeOnce.Do(func() {
		close(t.closing)
		err = t.rwc.Close()
		<-t.done
	})
	return err
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
