// Package pipe is an in-process transport: a client Conn whose frames go to
// a device-side transport.Handler in the same process. Frames are encoded
// and parsed on the way, as on a wire, so the bytes are the real ones. It is
// used by unit tests of the RPC layer and the emulator; it has no URL scheme.
package pipe

import (
	"context"
	"sync"

	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
)

// Conn is the client end of a pipe.
type Conn struct {
	h transport.Handler

	ctx    context.Context // cancelled by Close: ends handlers in flight
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	closed bool
	recv   chan *frame.Frame
}

// New returns a client Conn served by h.
func New(h transport.Handler) *Conn {
	ctx, cancel := context.WithCancel(context.Background())
	return &Conn{h: h, ctx: ctx, cancel: cancel, recv: make(chan *frame.Frame, 64)}
}

// Send hands f to the device side, which answers asynchronously.
func (c *Conn) Send(ctx context.Context, f *frame.Frame) error {
	b, err := frame.Marshal(f)
	if err != nil {
		return err
	}
	req, err := frame.Parse(b)
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return transport.ErrClosed
	}
	c.wg.Add(1)
	c.mu.Unlock()
	if err := ctx.Err(); err != nil {
		c.wg.Done()
		return err
	}
	go func() {
		defer c.wg.Done()
		ctx, replied := transport.WithReplyNotice(c.ctx)
		defer replied() // delivered, or given up on: see transport.AfterReply
		resp := c.h.HandleFrame(ctx, req)
		if resp == nil {
			return
		}
		b, err := frame.Marshal(resp)
		if err != nil {
			return
		}
		r, err := frame.Parse(b)
		if err != nil || c.ctx.Err() != nil {
			return // a closed pipe delivers nothing more
		}
		select {
		case c.recv <- r:
		case <-c.ctx.Done():
		}
	}()
	return nil
}

// Recv returns the next reply.
func (c *Conn) Recv(ctx context.Context) (*frame.Frame, error) {
	if c.ctx.Err() != nil {
		return nil, transport.ErrClosed
	}
	select {
	case f := <-c.recv:
		return f, nil
	case <-c.ctx.Done():
		return nil, transport.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Close ends the pipe and waits for the handlers in flight to return.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	return nil
}
