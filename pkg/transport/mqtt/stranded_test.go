package mqtt

import (
	"context"
	"encoding/json"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/mqtt/mqtttest"
)

// When a broker connection breaks with messages queued behind paho's
// writer (a push's window of writes, a device's replies to them), paho
// v1.5.1 holds each of those Publish calls for its whole write timeout
// (10 s): it checked the connection first, then waits for a writer that
// is gone. Close, of either end, must not wait for them: a push regaining
// its link after a broker restart closes the lost connection first, and
// used to spend its whole 10 s reconnect budget in that Close (the fault
// matrix's broker_restart_during_push, about one run in fifteen).

// TestCloseDoesNotWaitForPublishesStrandedByALoss: a client with many
// requests queued when its broker connection breaks closes at once, while
// the stranded calls are still in paho.
func TestCloseDoesNotWaitForPublishesStrandedByALoss(t *testing.T) {
	noLeaks(t) // but the calls still stranded (transporttest.LeakIgnores)
	b := mqtttest.Start(t, mqtttest.Config{})
	px := startFreezeProxy(t, b.Addr)
	p := newSessions(t, SessionsOptions{Linger: -1})
	c, err := p.Dial(ctxT(t), mustURL(t, "mqtt://"+px.addr+"/dev1"), transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := c.(*conn).s

	px.freeze() // the broker reads nothing more: paho's writer blocks
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	var senders sync.WaitGroup
	errs := make(chan error, senders32)
	for i := range senders32 {
		senders.Add(1)
		go func() {
			defer senders.Done()
			errs <- c.Send(ctx, bigFrame(int64(i+1)))
		}()
	}
	waitStranded(t, &s.gate, senders32/2)
	px.cut()
	senders.Wait()
	close(errs)
	for err := range errs {
		if err == nil {
			t.Fatal("a Send succeeded although the broker read none of them")
		}
	}
	closeLeavesStranded(t, &s.gate, "Close", func() { c.Close() })
}

// TestServerCloseDoesNotWaitForRepliesStrandedByALoss: a device whose
// replies are queued when its broker connection breaks (a reboot right
// after a broker restart) closes at once too.
func TestServerCloseDoesNotWaitForRepliesStrandedByALoss(t *testing.T) {
	noLeaks(t)
	b := mqtttest.Start(t, mqtttest.Config{})
	px := startFreezeProxy(t, b.Addr)
	big := bigFrame(0).Params
	srv := serve(t, "mqtt://"+px.addr, "dev1", transport.HandlerFunc(func(ctx context.Context, f *frame.Frame) *frame.Frame {
		return &frame.Frame{ID: f.ID, Result: big}
	}), transport.Options{})
	c, err := Dial(ctxT(t), mustURL(t, b.URL+"/dev1"), transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	srv.mu.Lock()
	sess := srv.cur
	srv.mu.Unlock()

	px.freeze()
	for i := range senders32 {
		if err := c.Send(ctxT(t), &frame.Frame{ID: int64(i + 1), Method: "Big"}); err != nil {
			t.Fatal(err)
		}
	}
	// (The broker holds back requests the device has not acknowledged;
	// a few are enough.)
	waitStranded(t, &sess.gate, 4)
	px.cut()
	select {
	case <-sess.lost:
	case <-time.After(wait):
		t.Fatal("the device never noticed its broker connection broke")
	}
	closeLeavesStranded(t, &sess.gate, "the device's Close", func() { srv.Close() })
}

// closeLeavesStranded checks that close returns while calls the loss
// stranded in paho are still under way in g, rather than waiting for them.
func closeLeavesStranded(t *testing.T, g *pubGate, what string, close func()) {
	t.Helper()
	if g.underWay() == 0 {
		t.Fatal("the loss left no call in paho: the test shows nothing")
	}
	close()
	if g.underWay() == 0 {
		t.Fatalf("%s waited for the calls the loss stranded in paho (up to its 10 s write timeout)", what)
	}
}

// senders32 is how many messages each test queues: far more than paho's
// writer holds, so that most wait in Publish when the link breaks.
const senders32 = 32

// bigFrame is a request whose 256 KiB of params fill the socket buffers
// of a link that is not read.
func bigFrame(id int64) *frame.Frame {
	p, _ := json.Marshal(strings.Repeat("x", 256<<10))
	return &frame.Frame{ID: id, Method: "Big", Params: p}
}

// waitStranded waits until at least n calls are under way in g: queued in
// paho behind a writer that cannot write.
func waitStranded(t *testing.T, g *pubGate, n int) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for g.underWay() < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d Publish calls under way, want %d", g.underWay(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// freezeProxy is a loopProxy in front of a broker whose freeze stops it
// reading from the clients (the broker's side still flows to them), the
// sockets staying open until cut.
type freezeProxy struct {
	*loopProxy
	frozen chan struct{}
	once   sync.Once
}

func startFreezeProxy(t *testing.T, broker string) *freezeProxy {
	t.Helper()
	fp := &freezeProxy{frozen: make(chan struct{})}
	fp.loopProxy = startLoopProxy(t, func(px *loopProxy, _ int, c net.Conn) {
		up, ok := px.dial(broker, c)
		if !ok {
			return
		}
		// A small window, so that paho's writer blocks soon.
		_ = c.(*net.TCPConn).SetReadBuffer(4 << 10)
		px.run(func() { relay(c, up) })
		px.run(func() { relayUntil(up, c, fp.frozen) })
	})
	return fp
}

func (fp *freezeProxy) freeze() { fp.once.Do(func() { close(fp.frozen) }) }
