package serial

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
)

// HandshakeInterval is how often the handshake is repeated until the device
// answers (mos uses the same period).
const HandshakeInterval = 200 * time.Millisecond

// writeChunk is the largest single write: flow control (XOFF) and ctx are
// checked between chunks. 256 bytes take 22 ms at 115200 baud.
const writeChunk = 256

// closeWriteWait bounds how long Close waits for a write in progress to
// finish its chunk before closing the port under it.
const closeWriteWait = 2 * time.Second

// closeReadWait bounds how long Close waits for the reader goroutine after
// closing the stream.
const closeReadWait = 5 * time.Second

// recvQueue is how many received frames wait for Recv before the reader
// stops reading.
const recvQueue = 128

// conn is the client end of a serial link.
type conn struct {
	rwc  io.ReadWriteCloser
	opts transport.Options

	frames    chan incoming
	handshook chan struct{}
	hsOnce    sync.Once
	gate      *flowGate

	wsem chan struct{} // write lock that a ctx can give up waiting for

	closing   chan struct{}
	closeOnce sync.Once
	closeErr  error

	readDone chan struct{}
	readErr  error // set before readDone is closed
}

// NewConn runs the client side of the serial protocol over rwc (an open
// serial port, a pty, or any stream in tests): it starts the reader, then
// writes the handshake every HandshakeInterval until the device answers it,
// for as long as ctx allows. On failure rwc is closed.
//
// rwc.Close must unblock a pending Read (go.bug.st/serial ports, pipes and
// pollable files do). The returned Conn owns rwc. Device log output seen on
// the link goes to opts.DeviceLog, called from the reader goroutine (a slow
// callback slows reading down). Frames longer than opts.MaxFrame() are
// dropped.
func NewConn(ctx context.Context, rwc io.ReadWriteCloser, opts transport.Options) (transport.Conn, error) {
	c := &conn{
		rwc:       rwc,
		opts:      opts,
		frames:    make(chan incoming, recvQueue),
		handshook: make(chan struct{}),
		gate:      newFlowGate(),
		wsem:      make(chan struct{}, 1),
		closing:   make(chan struct{}),
		readDone:  make(chan struct{}),
	}
	go c.readLoop()
	if err := c.handshake(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *conn) handshake(ctx context.Context) error {
	tick := time.NewTicker(HandshakeInterval)
	defer tick.Stop()
	for {
		if err := c.write(ctx, []byte(Handshake), false); err != nil {
			return fmt.Errorf("serial handshake: %w", err)
		}
		select {
		case <-c.handshook:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("serial handshake: no answer from the device: %w; check that it runs Mongoose OS with RPC over UART on this port, the baud rate (?baud=N), and that no other program uses the port", ctx.Err())
		case <-c.readDone:
			return fmt.Errorf("serial handshake: %w", c.linkErr())
		case <-tick.C:
		}
	}
}

func (c *conn) readLoop() {
	defer close(c.readDone)
	dec := &Decoder{
		MaxFrameSize: c.opts.MaxFrame(),
		OnFrame:      c.onFrame,
		OnJunk:       c.onJunk,
		OnBadFrame:   c.onBadFrame,
		OnHandshake: func() {
			c.hsOnce.Do(func() { close(c.handshook) })
			// The device just answered: it is listening.
			c.gate.set(false)
		},
		OnFlow: c.gate.set,
	}
	buf := make([]byte, 4096)
	idle := 0
	for {
		n, err := c.rwc.Read(buf)
		if n > 0 {
			idle = 0
			dec.Feed(buf[:n])
		}
		if err != nil {
			dec.Flush()
			c.readErr = err
			return
		}
		if n == 0 {
			// A port with a read timeout returns (0, nil) (go.bug.st/serial
			// does): not an end of stream. Back off if it repeats, so that a
			// port that does it without waiting does not spin.
			idle++
			if idle > 10 {
				t := time.NewTimer(10 * time.Millisecond)
				select {
				case <-c.closing:
				case <-t.C:
				}
				t.Stop()
			}
			select {
			case <-c.closing:
				c.readErr = transport.ErrClosed
				return
			default:
			}
		}
	}
}

func (c *conn) onFrame(data []byte) {
	c.opts.DebugFrame("recv", data)
	f, err := frame.Parse(data)
	if err != nil {
		if c.opts.Logger != nil {
			c.opts.Logger.Debug("serial: dropping unparsable frame", "err", err)
		}
		return
	}
	c.hand(incoming{f: f})
}

// incoming is what the reader hands to Recv: a frame, or the error for a
// damaged reply.
type incoming struct {
	f   *frame.Frame
	err error
}

func (c *conn) hand(in incoming) {
	select {
	case c.frames <- in:
	case <-c.closing:
	}
}

// onBadFrame sees each frame candidate the decoder dropped as log output.
// One whose text still names a request id (`"id":N`) may be the damaged
// reply to that request: it is handed to Recv as a *transport.NotRPCError
// with that ID, and the RPC client fails the call if it is in flight, at
// once instead of after its timeout. A device log line that looks like a
// frame names no id in flight, and the client ignores it (docs/transports.md).
func (c *conn) onBadFrame(cand []byte, reason string) {
	id := scanID(cand)
	if id == 0 {
		return
	}
	e := transport.NewNotRPCError("a serial frame", reason, cand, "")
	e.ID = id
	e.Hint = "the link may be noisy: check the cable and the baud rate, and run the command again"
	c.hand(incoming{err: e})
}

func (c *conn) onJunk(line string) {
	if c.opts.DeviceLog != nil {
		c.opts.DeviceLog(line)
	}
}

// linkErr is the error that ended the reader.
func (c *conn) linkErr() error {
	select {
	case <-c.closing:
		return transport.ErrClosed
	default:
	}
	if c.readErr == nil || errors.Is(c.readErr, io.EOF) {
		return fmt.Errorf("serial link closed by the other end (device unplugged or reset?): %w", io.EOF)
	}
	return fmt.Errorf("serial link lost (device unplugged or reset?): %w", c.readErr)
}

// write writes b under the write lock, in chunks, waiting for XON before
// each chunk when obeyFlow is set.
func (c *conn) write(ctx context.Context, b []byte, obeyFlow bool) error {
	select {
	case c.wsem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-c.closing:
		return transport.ErrClosed
	}
	defer func() { <-c.wsem }()
	for len(b) > 0 {
		if obeyFlow {
			select {
			case <-c.gate.ready():
			case <-ctx.Done():
				return ctx.Err()
			case <-c.closing:
				return transport.ErrClosed
			}
		}
		// The select above picks at random among ready cases: check again.
		select {
		case <-c.closing:
			return transport.ErrClosed
		default:
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(len(b), writeChunk)
		m, err := c.rwc.Write(b[:n])
		b = b[m:]
		if err != nil {
			select {
			case <-c.closing:
				return transport.ErrClosed
			default:
			}
			return fmt.Errorf("write to serial port: %w", err)
		}
		if m == 0 {
			return fmt.Errorf("write to serial port: %w", io.ErrShortWrite)
		}
	}
	return nil
}

// Send writes f as one frame. It waits while the device holds writing off
// with XOFF, for as long as ctx allows.
func (c *conn) Send(ctx context.Context, f *frame.Frame) error {
	select {
	case <-c.closing:
		return transport.ErrClosed
	default:
	}
	data, err := frame.Marshal(f)
	if err != nil {
		return fmt.Errorf("encode frame: %w", err)
	}
	select {
	case <-c.readDone:
		return c.linkErr()
	default:
	}
	c.opts.DebugFrame("send", data)
	return c.write(ctx, EncodeFrame(data), true)
}

// Recv returns the next frame from the device.
func (c *conn) Recv(ctx context.Context) (*frame.Frame, error) {
	select {
	case <-c.closing:
		return nil, transport.ErrClosed
	default:
	}
	select {
	case in := <-c.frames:
		return in.f, in.err
	default:
	}
	select {
	case in := <-c.frames:
		return in.f, in.err
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-c.closing:
		return nil, transport.ErrClosed
	case <-c.readDone:
		select {
		case in := <-c.frames:
			return in.f, in.err
		default:
		}
		return nil, c.linkErr()
	}
}

// Close closes the port. It is idempotent; pending and later Send and Recv
// calls return transport.ErrClosed.
func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		close(c.closing)
		// Let a write in progress finish its chunk, so that the port is
		// not closed (and its descriptor reused) under it; a write stuck in
		// the driver (hardware flow control) is not waited for forever.
		t := time.NewTimer(closeWriteWait)
		select {
		case c.wsem <- struct{}{}:
		case <-t.C:
		}
		t.Stop()
		c.closeErr = c.rwc.Close()
		t = time.NewTimer(closeReadWait)
		select {
		case <-c.readDone:
		case <-t.C:
		}
		t.Stop()
	})
	return c.closeErr
}

// scanID finds the first `"id"` key followed by a positive integer in a
// damaged frame (a device writes the id first) and returns it, or 0.
func scanID(b []byte) int64 {
	const key = `"id"`
	for i := 0; i+len(key) <= len(b); i++ {
		if string(b[i:i+len(key)]) != key {
			continue
		}
		j := i + len(key)
		for j < len(b) && (b[j] == ' ' || b[j] == '\t') {
			j++
		}
		if j >= len(b) || b[j] != ':' {
			continue
		}
		j++
		for j < len(b) && (b[j] == ' ' || b[j] == '\t') {
			j++
		}
		var v int64
		k := j
		for k < len(b) && b[k] >= '0' && b[k] <= '9' && k-j < 18 {
			v = v*10 + int64(b[k]-'0')
			k++
		}
		if k > j && v > 0 {
			return v
		}
	}
	return 0
}
