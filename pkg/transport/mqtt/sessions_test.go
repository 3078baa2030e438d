package mqtt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/mqtt/mqtttest"
	"github.com/otactl/otactl/pkg/transport/transporttest"
)

// newSessions makes a pool closed in t.Cleanup (register a leak check
// first).
func newSessions(t *testing.T, opts SessionsOptions) *Sessions {
	t.Helper()
	p := NewSessions(opts)
	t.Cleanup(func() { p.Close() })
	return p
}

func dialVia(t *testing.T, p *Sessions, devURL string, opts transport.Options) transport.Conn {
	t.Helper()
	c, err := p.Dial(ctxT(t), mustURL(t, devURL), opts)
	if err != nil {
		t.Fatalf("Sessions.Dial %s: %v", devURL, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// whoAmI is a device that answers every call with its own id and the
// call's params, so that a reply delivered to the wrong device's
// connection shows.
func whoAmI(id string) transport.Handler {
	return transport.HandlerFunc(func(ctx context.Context, req *frame.Frame) *frame.Frame {
		if req.ID == 0 {
			return nil
		}
		res, _ := json.Marshal(map[string]any{"dev": id, "params": req.ParamsOrArgs()})
		return &frame.Frame{ID: req.ID, Result: res}
	})
}

// ask calls device dev over c with a unique value and checks that the
// reply is the one to this call, from dev; any other frame on c fails.
func ask(ctx context.Context, c transport.Conn, dev string, n int) error {
	id := 1<<40 + testIDs.Add(1)
	v := fmt.Sprintf("%s-%d", dev, n)
	p, _ := json.Marshal(v)
	if err := c.Send(ctx, &frame.Frame{ID: id, Method: "Who", Params: p}); err != nil {
		return fmt.Errorf("%s: send: %w", dev, err)
	}
	f, err := c.Recv(ctx)
	if err != nil {
		return fmt.Errorf("%s: recv: %w", dev, err)
	}
	var res struct {
		Dev    string `json:"dev"`
		Params string `json:"params"`
	}
	if f.ID != id || json.Unmarshal(f.Result, &res) != nil || res.Dev != dev || res.Params != v || f.Src != dev {
		return fmt.Errorf("%s: call %d got %s (id %d, src %q)", dev, id, f.Result, f.ID, f.Src)
	}
	return nil
}

func devIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev%03d", i)
	}
	return ids
}

// Many devices through one pool take one broker connection; calls to all
// of them at once each get their own device's reply.
func TestSessionsManyDevicesOneConnection(t *testing.T) {
	noLeaks(t)
	b := mqtttest.Start(t, mqtttest.Config{})
	ids := devIDs(40)
	for _, id := range ids {
		serve(t, b.URL, id, whoAmI(id), transport.Options{})
	}
	p := newSessions(t, SessionsOptions{})
	conns := make([]transport.Conn, len(ids))
	var wg sync.WaitGroup
	errs := make(chan error, len(ids)*4)
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := p.Dial(ctxT(t), mustURL(t, b.URL+"/"+id), transport.Options{})
			if err != nil {
				errs <- err
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	for _, c := range conns {
		if c != nil {
			t.Cleanup(func() { c.Close() })
		}
	}
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	// Each device: three calls in a row, all devices at once.
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range 3 {
				if err := ask(ctxT(t), conns[i], id, n); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := b.Clients("otactl-"); n != 1 {
		t.Errorf("otactl holds %d broker connections, want 1", n)
	}
	if n := b.Connects("otactl-"); n != 1 {
		t.Errorf("otactl connected %d times, want 1", n)
	}
	st := p.Stats()
	if st.Open != 1 || st.Peak != 1 || st.Connects != 1 || st.Devices != len(ids) {
		t.Errorf("stats %+v", st)
	}
	// At most 8 topics a SUBSCRIBE, and fewer SUBSCRIBEs than devices
	// (the dials were all at once).
	if min := (len(ids) + maxTopicsPerSubscribe - 1) / maxTopicsPerSubscribe; st.Subscribes < min || st.Subscribes >= len(ids) {
		t.Errorf("%d SUBSCRIBEs for %d devices dialled at once", st.Subscribes, len(ids))
	}
	ida := conns[0].(*conn).ClientID()
	for _, c := range conns {
		if c.(*conn).ClientID() != ida {
			t.Fatalf("client ids %q and %q in one pool", ida, c.(*conn).ClientID())
		}
	}
}

// The wire of one device through a pool is Dial's, byte for byte (and
// mos's): TestGoldenWire's messages.
func TestSessionsGoldenWire(t *testing.T) {
	noLeaks(t)
	bu := startMochi(t)
	sn := newSniffer(t, bu)
	serve(t, bu, "esp32_ABCDEF", transporttest.NewEchoDevice(), transport.Options{})
	p := newSessions(t, SessionsOptions{})
	c := dialVia(t, p, bu+"/esp32_ABCDEF", transport.Options{ClientID: "otactl-golden"})
	req := &frame.Frame{ID: 1711787588495, Src: "mos", Dst: "elsewhere", Method: transporttest.MethodEcho, Params: json.RawMessage(`{"x":1,"s":"Grüße"}`)}
	ctx := ctxT(t)
	if err := c.Send(ctx, req); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Recv(ctx); err != nil {
		t.Fatal(err)
	}
	want := []message{
		{topic: "esp32_ABCDEF/rpc", qos: 1,
			payload: `{"src":"esp32_ABCDEF/rpc-resp/otactl-golden","dst":"esp32_ABCDEF","id":1711787588495,"method":"Test.Echo","params":{"x":1,"s":"Gr\u00fc\u00dfe"}}`},
		{topic: "esp32_ABCDEF/rpc-resp/otactl-golden/rpc", qos: 1,
			payload: `{"src":"testdev","dst":"esp32_ABCDEF/rpc-resp/otactl-golden","id":1711787588495,"result":{"x":1,"s":"Gr\u00fc\u00dfe"}}`},
	}
	got := sn.waitFor(t, len(want))
	for _, w := range want {
		found := false
		for _, g := range got {
			found = found || g == w
		}
		if !found {
			t.Errorf("message not seen on the broker:\nwant %+v\n got %+v", w, got)
		}
	}
}

// Closing one device's connection leaves the others working, with a call
// in flight; the closed one says ErrClosed.
func TestSessionsCloseOneLeavesOthers(t *testing.T) {
	noLeaks(t)
	b := mqtttest.Start(t, mqtttest.Config{})
	blocker := transporttest.NewEchoDevice()
	serve(t, b.URL, "a", whoAmI("a"), transport.Options{})
	serve(t, b.URL, "b", blocker, transport.Options{})
	p := newSessions(t, SessionsOptions{})
	a := dialVia(t, p, b.URL+"/a", transport.Options{})
	bc := dialVia(t, p, b.URL+"/b", transport.Options{})
	ctx := ctxT(t)
	// b's call is in flight while a closes.
	if err := bc.Send(ctx, &frame.Frame{ID: 4242, Method: transporttest.MethodBlock, Params: json.RawMessage(`"held"`)}); err != nil {
		t.Fatal(err)
	}
	<-blocker.Entered
	recvErr := make(chan error, 1)
	go func() {
		_, err := a.Recv(context.Background())
		recvErr <- err
	}()
	a.Close()
	if err := <-recvErr; !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("Recv on the closed connection: %v", err)
	}
	if err := a.Send(ctx, &frame.Frame{ID: 1, Method: "X"}); !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("Send on the closed connection: %v", err)
	}
	close(blocker.Release)
	f, err := bc.Recv(ctx)
	if err != nil || f.ID != 4242 || string(f.Result) != `"held"` {
		t.Fatalf("b's reply after a closed: %+v, %v", f, err)
	}
	// A new connection to a comes over the same broker connection.
	a2 := dialVia(t, p, b.URL+"/a", transport.Options{})
	if err := ask(ctx, a2, "a", 1); err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st.Connects != 1 || st.Open != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// manualLinger records linger timers for the test to fire.
type manualLinger struct {
	mu     sync.Mutex
	timers []*lingerTimer
}

type lingerTimer struct {
	d       time.Duration
	f       func()
	stopped bool
}

func (m *manualLinger) afterFunc(d time.Duration, f func()) func() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	lt := &lingerTimer{d: d, f: f}
	m.timers = append(m.timers, lt)
	return func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		was := !lt.stopped
		lt.stopped = true
		return was
	}
}

// fire runs the last timer, as if its time had come, and reports whether
// it was still armed.
func (m *manualLinger) fire(t *testing.T) bool {
	t.Helper()
	m.mu.Lock()
	if len(m.timers) == 0 {
		m.mu.Unlock()
		t.Fatal("no linger timer")
	}
	lt := m.timers[len(m.timers)-1]
	armed := !lt.stopped
	lt.stopped = true
	m.mu.Unlock()
	lt.f() // a timer that was stopped late still runs: the session must ignore it
	return armed
}

// The broker connection outlives its last device connection for the
// linger time: a re-dial meanwhile (the outcome wait after a reboot)
// reuses it; then it ends.
func TestSessionsLinger(t *testing.T) {
	noLeaks(t)
	b := mqtttest.Start(t, mqtttest.Config{})
	serve(t, b.URL, "a", whoAmI("a"), transport.Options{})
	ml := &manualLinger{}
	p := newSessions(t, SessionsOptions{AfterFunc: ml.afterFunc, Linger: time.Minute})
	ctx := ctxT(t)
	a, err := p.Dial(ctx, mustURL(t, b.URL+"/a"), transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := ask(ctx, a, "a", 0); err != nil {
		t.Fatal(err)
	}
	a.Close()
	if n := b.Clients("otactl-"); n != 1 || p.Stats().Open != 1 {
		t.Fatalf("after the last Close: %d broker connections, stats %+v; want the session lingering", n, p.Stats())
	}
	if ml.timers[0].d != time.Minute {
		t.Fatalf("linger %v", ml.timers[0].d)
	}
	a, err = p.Dial(ctx, mustURL(t, b.URL+"/a"), transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// The timer stopped by the re-dial fires anyway (it lost the race):
	// the session in use stays.
	if ml.fire(t) {
		t.Fatal("the re-dial did not stop the linger timer")
	}
	if err := ask(ctx, a, "a", 1); err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st.Connects != 1 {
		t.Fatalf("re-dial within the linger connected again: %+v", st)
	}
	a.Close()
	if !ml.fire(t) {
		t.Fatal("no linger timer armed after the last Close")
	}
	if st := p.Stats(); st.Open != 0 || st.Connects != 1 {
		t.Fatalf("after the linger: %+v", st)
	}
	waitClients(t, b, "otactl-", 0)
	// The next dial connects anew.
	a = dialVia(t, p, b.URL+"/a", transport.Options{})
	if err := ask(ctx, a, "a", 2); err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st.Open != 1 || st.Connects != 2 || st.Peak != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// waitClients waits until the broker counts n connected clients with
// prefix (a disconnect reaches it a moment after the client returned).
func waitClients(t *testing.T, b *mqtttest.Broker, prefix string, n int) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for b.Clients(prefix) != n {
		if time.Now().After(deadline) {
			t.Fatalf("broker has %d %q clients, want %d", b.Clients(prefix), prefix, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// With no linger the broker connection ends with the last device
// connection; Close of the pool ends connections still open.
func TestSessionsNoLingerAndClose(t *testing.T) {
	noLeaks(t)
	b := mqtttest.Start(t, mqtttest.Config{})
	serve(t, b.URL, "a", whoAmI("a"), transport.Options{})
	p := newSessions(t, SessionsOptions{Linger: -1})
	a, err := p.Dial(ctxT(t), mustURL(t, b.URL+"/a"), transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	if st := p.Stats(); st.Open != 0 {
		t.Fatalf("stats after the last Close: %+v", st)
	}
	waitClients(t, b, "otactl-", 0)

	a = dialVia(t, p, b.URL+"/a", transport.Options{})
	recvErr := make(chan error, 1)
	go func() {
		_, err := a.Recv(context.Background())
		recvErr <- err
	}()
	p.Close()
	if err := <-recvErr; !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("Recv after the pool closed: %v", err)
	}
	if err := a.Send(ctxT(t), &frame.Frame{ID: 1, Method: "X"}); !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("Send after the pool closed: %v", err)
	}
	if _, err := p.Dial(ctxT(t), mustURL(t, b.URL+"/a"), transport.Options{}); !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("Dial after the pool closed: %v", err)
	}
	waitClients(t, b, "otactl-", 0)
}

// A broker restart: every device's connection reports the loss, as a
// connection of its own would; the re-dials all share one new broker
// connection and work.
func TestSessionsBrokerRestart(t *testing.T) {
	noLeaks(t)
	b := mqtttest.Start(t, mqtttest.Config{})
	ids := devIDs(12)
	for _, id := range ids {
		serve(t, b.URL, id, whoAmI(id), transport.Options{})
	}
	p := newSessions(t, SessionsOptions{})
	conns := map[string]transport.Conn{}
	for _, id := range ids {
		conns[id] = dialVia(t, p, b.URL+"/"+id, transport.Options{})
		if err := ask(ctxT(t), conns[id], id, 0); err != nil {
			t.Fatal(err)
		}
	}
	b.Close()
	for id, c := range conns {
		_, err := c.Recv(ctxT(t))
		if err == nil || !strings.Contains(err.Error(), "lost") {
			t.Fatalf("%s: Recv after the broker went away: %v", id, err)
		}
		c.Close()
	}
	b2 := mqtttest.Start(t, mqtttest.Config{Addr: b.Addr})
	// The devices come back by themselves, with their back-off; re-dial
	// each (all at once) until it answers.
	var wg sync.WaitGroup
	errs := make(chan error, len(ids))
	for _, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			deadline := time.Now().Add(wait)
			for {
				ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				c, err := p.Dial(ctx, mustURL(t, b2.URL+"/"+id), transport.Options{})
				if err == nil {
					err = ask(ctx, c, id, 1)
					c.Close()
				}
				cancel()
				if err == nil {
					return
				}
				if time.Now().After(deadline) {
					errs <- fmt.Errorf("%s after the restart: %w", id, err)
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := b2.Connects("otactl-"); n != 1 {
		t.Errorf("the re-dials opened %d broker connections, want 1", n)
	}
	if st := p.Stats(); st.Open != 1 || st.Connects != 2 || st.Peak != 1 {
		t.Errorf("stats %+v", st)
	}
}

// countingListener accepts TCP connections and hangs up on them: a broker
// that is down in a way that costs a connect attempt each time.
func countingListener(t *testing.T) (addr string, accepts *atomic.Int32) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepts = &atomic.Int32{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepts.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return l.Addr().String(), accepts
}

// After a failed connect, dials to that broker fail at once with its
// error for the hold-off time, however many devices they are for: no
// stampede on a broker that is down.
func TestSessionsHoldOff(t *testing.T) {
	noLeaks(t)
	addr, accepts := countingListener(t)
	var now atomic.Int64
	now.Store(time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	clock := func() time.Time { return time.Unix(0, now.Load()) }
	advance := func(d time.Duration) { now.Add(int64(d)) }
	p := newSessions(t, SessionsOptions{Now: clock, HoldOffMin: time.Second, HoldOffMax: 3 * time.Second})
	dialErr := func(dev string) error {
		t.Helper()
		c, err := p.Dial(ctxT(t), mustURL(t, "mqtt://"+addr+"/"+dev), transport.Options{})
		if err == nil {
			c.Close()
			t.Fatal("Dial to a broker that hangs up succeeded")
		}
		return err
	}
	first := dialErr("d0")
	if !strings.Contains(first.Error(), "cannot connect to MQTT broker") || accepts.Load() != 1 {
		t.Fatalf("first dial: %v, %d connects", first, accepts.Load())
	}
	for i := range 50 {
		if err := dialErr(fmt.Sprintf("d%d", i)); err.Error() != first.Error() {
			t.Fatalf("dial in the hold-off: %v", err)
		}
	}
	if n := accepts.Load(); n != 1 {
		t.Fatalf("50 dials in the hold-off made %d connect attempts, want none", n-1)
	}
	for _, step := range []struct {
		after time.Duration
		tries int32
	}{
		{time.Second, 2},       // the first hold-off: 1 s
		{time.Second, 2},       // the second is 2 s
		{time.Second, 3},       //
		{3 * time.Second, 4},   // capped at 3 s
		{3*time.Second - 1, 4}, //
		{1, 5},                 //
	} {
		advance(step.after)
		dialErr("x")
		if n := accepts.Load(); n != step.tries {
			t.Fatalf("after %v more: %d connect attempts, want %d", step.after, n, step.tries)
		}
	}
}

// A dial whose ctx ends before it connected gives up without connecting.
// A dial waiting for the connect of another dial, whose ctx ends first,
// connects again by itself.
func TestSessionsDialCtx(t *testing.T) {
	noLeaks(t)
	b := mqtttest.Start(t, mqtttest.Config{})
	serve(t, b.URL, "a", whoAmI("a"), transport.Options{})
	p := newSessions(t, SessionsOptions{})
	done, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p.Dial(done, mustURL(t, b.URL+"/a"), transport.Options{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Dial with a cancelled ctx: %v", err)
	}
	if n := b.Connects("otactl-"); n != 0 {
		t.Fatalf("a cancelled dial connected")
	}

	// The first connection to the front is never answered; later ones
	// reach the broker.
	front, firstAccepted := stallFirst(t, b.Addr)
	short, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	openerErr := make(chan error, 1)
	go func() {
		_, err := p.Dial(short, mustURL(t, "mqtt://"+front+"/a"), transport.Options{})
		openerErr <- err
	}()
	<-firstAccepted
	waiter, err := p.Dial(ctxT(t), mustURL(t, "mqtt://"+front+"/a"), transport.Options{})
	if err != nil {
		t.Fatalf("the waiting dial: %v", err)
	}
	defer waiter.Close()
	if err := <-openerErr; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the dial whose ctx ended: %v", err)
	}
	if err := ask(ctxT(t), waiter, "a", 0); err != nil {
		t.Fatal(err)
	}
}

// stallFirst listens on a front address whose first connection is
// accepted and never answered, and whose later ones are relayed to addr.
func stallFirst(t *testing.T, addr string) (front string, firstAccepted <-chan struct{}) {
	t.Helper()
	first := make(chan struct{})
	px := startLoopProxy(t, func(px *loopProxy, n int, c net.Conn) {
		if n == 0 {
			close(first)
			return
		}
		if up, ok := px.dial(addr, c); ok {
			px.run(func() { relay(up, c) })
			px.run(func() { relay(c, up) })
		}
	})
	return px.addr, first
}

// Separate client ids, credentials or TLS configurations are separate
// sessions; the same ones share.
func TestSessionsKeys(t *testing.T) {
	noLeaks(t)
	b := mqtttest.Start(t, mqtttest.Config{})
	serve(t, b.URL, "a", whoAmI("a"), transport.Options{})
	p := newSessions(t, SessionsOptions{})
	host := strings.TrimPrefix(b.URL, "mqtt://")
	for _, tc := range []struct {
		url  string
		opts transport.Options
	}{
		{b.URL + "/a", transport.Options{}},
		{b.URL + "/a", transport.Options{ClientID: "otactl-fixed"}},
		{"mqtt://user:pw@" + host + "/a", transport.Options{}},
		{"mqtt://user:pw2@" + host + "/a", transport.Options{}},
	} {
		c := dialVia(t, p, tc.url, tc.opts)
		if err := ask(ctxT(t), c, "a", 0); err != nil {
			t.Fatal(err)
		}
		c2 := dialVia(t, p, tc.url, tc.opts)
		if c2.(*conn).s != c.(*conn).s {
			t.Fatalf("%s %+v: two sessions for one key", transport.RedactString(tc.url), tc.opts)
		}
	}
	if st := p.Stats(); st.Connects != 4 || st.Open != 4 {
		t.Fatalf("stats %+v, want 4 sessions", st)
	}
}

// Two connections to one device on one session each get only the replies
// to their own requests.
func TestSessionsTwoConnsOneDevice(t *testing.T) {
	noLeaks(t)
	b := mqtttest.Start(t, mqtttest.Config{})
	serve(t, b.URL, "a", whoAmI("a"), transport.Options{})
	p := newSessions(t, SessionsOptions{})
	x := dialVia(t, p, b.URL+"/a", transport.Options{})
	y := dialVia(t, p, b.URL+"/a", transport.Options{})
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for _, c := range []transport.Conn{x, y} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range 20 {
				if err := ask(ctxT(t), c, "a", n); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if st := p.Stats(); st.Connects != 1 || st.Devices != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// Something that is not an RPC frame on one device's reply topic fails
// that device's connection's Recv, and no other's.
func TestSessionsNotRPCPerDevice(t *testing.T) {
	noLeaks(t)
	b := mqtttest.Start(t, mqtttest.Config{})
	sn := newSniffer(t, b.URL)
	serve(t, b.URL, "a", whoAmI("a"), transport.Options{})
	serve(t, b.URL, "b", whoAmI("b"), transport.Options{})
	p := newSessions(t, SessionsOptions{})
	a := dialVia(t, p, b.URL+"/a", transport.Options{})
	bc := dialVia(t, p, b.URL+"/b", transport.Options{})
	sn.publish(t, ReplyTopic("a", a.(*conn).ClientID()), "<html>oops</html>")
	if _, err := a.Recv(ctxT(t)); !errors.Is(err, transport.ErrNotRPC) {
		t.Fatalf("a: %v, want ErrNotRPC", err)
	}
	short, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if f, err := bc.Recv(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("b received %+v, %v: a's message reached b", f, err)
	}
	if err := ask(ctxT(t), bc, "b", 0); err != nil {
		t.Fatal(err)
	}
	if err := ask(ctxT(t), a, "a", 0); err != nil {
		t.Fatal(err)
	}
}

// A broker that refuses one device's reply topic (its ACL) fails that
// dial only, even when its topic went out in one SUBSCRIBE with others.
func TestSessionsRefusedSubscription(t *testing.T) {
	noLeaks(t)
	b := mqtttest.Start(t, mqtttest.Config{ACL: func(clientID, topic string, write bool) bool {
		return !strings.HasPrefix(topic, "secret/rpc-resp/")
	}})
	ids := append(devIDs(20), "secret")
	for _, id := range ids {
		serve(t, b.URL, id, whoAmI(id), transport.Options{})
	}
	p := newSessions(t, SessionsOptions{})
	var wg sync.WaitGroup
	results := make([]error, len(ids))
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := p.Dial(ctxT(t), mustURL(t, b.URL+"/"+id), transport.Options{})
			if err == nil {
				err = ask(ctxT(t), c, id, 0)
				c.Close()
			}
			results[i] = err
		}()
	}
	wg.Wait()
	for i, id := range ids {
		err := results[i]
		if id == "secret" {
			if err == nil || !strings.Contains(err.Error(), "refused the subscription") {
				t.Errorf("secret: %v, want a refused subscription", err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", id, err)
		}
	}
	if st := p.Stats(); st.Connects != 1 || st.Devices != len(ids)-1 {
		t.Fatalf("stats %+v", st)
	}
}

// The conformance suite, every connection dialled through a pool.
func sessionsStart(brokerURL func(t *testing.T) string) transporttest.StartFunc {
	return func(t *testing.T, h transport.Handler) *transporttest.Device {
		noLeaks(t)
		bu := brokerURL(t)
		dev := randomID("testdev-")
		serve(t, bu, dev, h, transport.Options{})
		p := newSessions(t, SessionsOptions{})
		return &transporttest.Device{
			Dial: func(ctx context.Context, opts transport.Options) (transport.Conn, error) {
				return p.Dial(ctx, mustURL(t, bu+"/"+dev), opts)
			},
		}
	}
}

func TestSessionsConformanceMochi(t *testing.T) {
	transporttest.Run(t, sessionsStart(startMochi))
}

func TestSessionsConformanceMosquitto(t *testing.T) {
	bu := mqtttest.Mosquitto(t)
	transporttest.Run(t, sessionsStart(func(*testing.T) string { return bu }))
}

// Through a real mosquitto: 200 devices, one broker connection, counted
// as this process's TCP connections to the broker.
func TestSessionsManyDevicesMosquitto(t *testing.T) {
	bu := mqtttest.Mosquitto(t)
	noLeaks(t)
	addr := strings.TrimPrefix(bu, "mqtt://")
	responder(t, bu)
	base, err := mqtttest.TCPConns(os.Getpid(), addr)
	if err != nil {
		t.Skip(err)
	}
	p := newSessions(t, SessionsOptions{})
	ids := make([]string, 200)
	for i := range ids {
		ids[i] = randomID("fleet-")
	}
	conns := callEach(t, p.Dial, bu, ids, 50)
	n, err := mqtttest.TCPConns(os.Getpid(), addr)
	for _, c := range conns {
		c.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	if n-base != 1 {
		t.Fatalf("%d devices over %d broker connections, want 1", len(ids), n-base)
	}
	if st := p.Stats(); st.Connects != 1 || st.Devices != len(ids) {
		t.Fatalf("stats %+v", st)
	}
}

// Close while a dial is connecting to a broker that does not answer ends
// the dial at once with ErrClosed.
func TestSessionsCloseDuringConnect(t *testing.T) {
	noLeaks(t)
	front, accepted := stallFirst(t, "127.0.0.1:1")
	p := NewSessions(SessionsOptions{})
	dialErr := make(chan error, 1)
	go func() {
		_, err := p.Dial(ctxT(t), mustURL(t, "mqtt://"+front+"/a"), transport.Options{})
		dialErr <- err
	}()
	<-accepted
	p.Close()
	select {
	case err := <-dialErr:
		if !errors.Is(err, transport.ErrClosed) {
			t.Fatalf("dial during Close: %v, want ErrClosed", err)
		}
	case <-time.After(wait):
		t.Fatal("Close did not end the dial under way")
	}
}
