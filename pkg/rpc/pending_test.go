package rpc_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
)

// orderConn is a transport.Conn that logs the order in which frames reach
// it. Its Send behaves like one of two kinds of link: "write" returns after
// a delay that is shorter for later frames (a racing writer would reorder
// them), "post" marks the frame sent (transport.Sent) and then blocks until
// the test answers it, like an HTTP POST waiting for its reply.
type orderConn struct {
	kind    string
	mu      sync.Mutex
	log     []int64
	in      chan *frame.Frame
	release map[int64]chan struct{}
	closed  chan struct{}
	once    sync.Once
	failAt  int // Send of the failAt-th frame (from 1) fails
	sends   int
}

func newOrderConn(kind string) *orderConn {
	return &orderConn{kind: kind, in: make(chan *frame.Frame, 64), release: map[int64]chan struct{}{}, closed: make(chan struct{})}
}

func (c *orderConn) Send(ctx context.Context, f *frame.Frame) error {
	c.mu.Lock()
	c.sends++
	n := c.sends
	rel := make(chan struct{})
	c.release[f.ID] = rel
	c.mu.Unlock()
	logIt := func() {
		c.mu.Lock()
		c.log = append(c.log, f.ID)
		c.mu.Unlock()
	}
	if n == c.failAt {
		logIt()
		return errors.New("link broke")
	}
	switch c.kind {
	case "write":
		// Written (and logged) after a delay, shorter for later frames.
		select {
		case <-time.After(time.Duration(10-min(n, 10)) * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
		logIt()
	case "post":
		logIt()
		transport.Sent(ctx)
		select {
		case <-rel:
		case <-ctx.Done():
			return ctx.Err()
		case <-c.closed:
			return transport.ErrClosed
		}
	}
	return nil
}

// answer replies to the frame with id (result: its position in the log).
func (c *orderConn) answer(id int64) {
	c.mu.Lock()
	pos := -1
	for i, x := range c.log {
		if x == id {
			pos = i
		}
	}
	rel := c.release[id]
	c.mu.Unlock()
	c.in <- &frame.Frame{ID: id, Result: []byte(fmt.Sprint(pos))}
	close(rel)
}

func (c *orderConn) Recv(ctx context.Context) (*frame.Frame, error) {
	select {
	case f := <-c.in:
		return f, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-c.closed:
		return nil, transport.ErrClosed
	}
}

func (c *orderConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

func (c *orderConn) ids() []int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]int64(nil), c.log...)
}

// Calls begun one after another reach the link in that order, whether the
// link's Send returns once written or waits for the reply (HTTP), and each
// Wait gets its own reply, whatever order the replies come in.
func TestStartKeepsOrder(t *testing.T) {
	for _, kind := range []string{"write", "post"} {
		t.Run(kind, func(t *testing.T) {
			ignore := goleak.IgnoreCurrent()
			t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
			conn := newOrderConn(kind)
			c := rpc.NewClient(conn, rpc.ClientOptions{})
			defer c.Close()
			const n = 8
			var ps []*rpc.Pending
			for i := range n {
				ps = append(ps, c.Start(ctx(t), "OTA.Write", map[string]int{"offset": i}))
			}
			ids := conn.ids()
			if len(ids) != n {
				t.Fatalf("%d frames sent before the replies, want %d", len(ids), n)
			}
			for i := n - 1; i >= 0; i-- { // replies in reverse order
				conn.answer(ids[i])
			}
			for i, p := range ps {
				res, err := p.Wait()
				if err != nil || string(res) != fmt.Sprint(i) {
					t.Fatalf("call %d: result %s, %v (it reached the link in another position)", i, res, err)
				}
			}
		})
	}
}

// A Send that fails ends that call's Wait with a link error; a cancelled
// context ends a Wait whose reply does not come.
func TestStartFailures(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	conn := newOrderConn("write")
	conn.failAt = 2
	c := rpc.NewClient(conn, rpc.ClientOptions{})
	defer c.Close()
	p1 := c.Start(ctx(t), "A", nil)
	p2 := c.Start(ctx(t), "B", nil)
	cctx, cancel := context.WithCancel(ctx(t))
	p3 := c.Start(cctx, "C", nil)
	var le *rpc.LinkError
	if _, err := p2.Wait(); !errors.As(err, &le) || le.Method != "B" {
		t.Fatalf("B: %v", err)
	}
	cancel()
	if _, err := p3.Wait(); !errors.As(err, &le) || !errors.Is(err, context.Canceled) {
		t.Fatalf("C: %v", err)
	}
	conn.answer(conn.ids()[0])
	if _, err := p1.Wait(); err != nil {
		t.Fatalf("A: %v", err)
	}
	// After Close, Start fails at once.
	c.Close()
	if _, err := c.Start(ctx(t), "D", nil).Wait(); !errors.As(err, &le) {
		t.Fatalf("D after Close: %v", err)
	}
}
