// Package transporttest is the conformance suite that every transport runs
// against its own device side (in the manner of rclone's backend tests).
//
//	func TestConformance(t *testing.T) {
//		transporttest.Run(t, func(t *testing.T, h transport.Handler) *transporttest.Device { ... })
//	}
package transporttest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
)

// Device is a device side started for one test.
type Device struct {
	// Dial opens a new client connection to the device with opts.
	Dial func(ctx context.Context, opts transport.Options) (transport.Conn, error)
	// Log, when set, makes the device print a log line on the link, between
	// frames, the way firmware logs on a UART. Transports without such a
	// channel leave it nil and the junk test is skipped.
	Log func(line string)
}

// StartFunc starts a device side that serves h and returns how to reach it.
// It must stop the device in t.Cleanup.
type StartFunc func(t *testing.T, h transport.Handler) *Device

// Timeout bounds every wait in the suite; a conforming transport answers in
// milliseconds on loopback.
const Timeout = 10 * time.Second

// Methods the suite's device understands.
const (
	MethodEcho  = "Test.Echo"  // result = params
	MethodBlock = "Test.Block" // blocks until released by the test, then result = params
)

// EchoDevice is the device-side handler used by the suite. Block gates
// MethodBlock: the handler signals Entered and waits for Release (or ctx).
type EchoDevice struct {
	Entered chan struct{}
	Release chan struct{}
}

// NewEchoDevice returns an EchoDevice ready for use.
func NewEchoDevice() *EchoDevice {
	return &EchoDevice{Entered: make(chan struct{}, 16), Release: make(chan struct{})}
}

// HandleFrame implements transport.Handler.
func (d *EchoDevice) HandleFrame(ctx context.Context, req *frame.Frame) *frame.Frame {
	if req.ID == 0 {
		return nil
	}
	resp := &frame.Frame{ID: req.ID, Src: "testdev", Dst: req.Src, Tag: req.Tag}
	switch req.Method {
	case MethodEcho:
	case MethodBlock:
		d.Entered <- struct{}{}
		select {
		case <-d.Release:
		case <-ctx.Done():
			return nil
		}
	default:
		resp.Error = &frame.Error{Code: 404, Message: "No handler for " + req.Method}
		return resp
	}
	p := req.ParamsOrArgs()
	if p == nil {
		p = json.RawMessage("null")
	}
	resp.Result = p
	return resp
}

// Run runs the whole suite.
func Run(t *testing.T, start StartFunc) {
	tests := []struct {
		name string
		fn   func(*testing.T, StartFunc)
	}{
		{"RoundTrip", testRoundTrip},
		{"NonASCII", testNonASCII},
		{"BigFrame", testBigFrame},
		{"JunkBetweenFrames", testJunk},
		{"CancelPendingCall", testCancelPending},
		{"AnswersWhileBlocked", testAnswersWhileBlocked},
		{"CloseUnblocksRecv", testCloseUnblocksRecv},
		{"DoubleClose", testDoubleClose},
		{"ConcurrentCalls", testConcurrent},
		{"TwoClients", testTwoClients},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Registered first so that it runs last, after the device and
			// connections registered below are torn down.
			LeakCheck(t)
			tc.fn(t, start)
		})
	}
}

var idSeq = struct {
	sync.Mutex
	n int64
}{n: 1 << 40}

func nextID() int64 {
	idSeq.Lock()
	defer idSeq.Unlock()
	idSeq.n += 7
	return idSeq.n
}

func dial(t *testing.T, dev *Device, opts transport.Options) transport.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	c, err := dev.Dial(ctx, opts)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func request(method string, params any) *frame.Frame {
	f := &frame.Frame{ID: nextID(), Src: "otactl", Method: method}
	if params != nil {
		b, err := json.Marshal(params)
		if err != nil {
			panic(err)
		}
		f.Params = b
	}
	return f
}

// recvID reads frames until the one with id arrives, skipping late replies
// to earlier requests, and unreadable answers a transport attributes to
// another request (a serial log line that looks like a damaged frame), as
// the RPC client does.
func recvID(ctx context.Context, c transport.Conn, id int64) (*frame.Frame, error) {
	for {
		f, err := c.Recv(ctx)
		var nr *transport.NotRPCError
		if errors.As(err, &nr) && nr.ID != 0 && nr.ID != id {
			continue
		}
		if err != nil {
			return nil, err
		}
		if f.ID == id {
			return f, nil
		}
	}
}

func roundTrip(t *testing.T, c transport.Conn, params any) *frame.Frame {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	req := request(MethodEcho, params)
	if err := c.Send(ctx, req); err != nil {
		t.Fatalf("send: %v", err)
	}
	resp, err := recvID(ctx, c, req.ID)
	if err != nil {
		t.Fatalf("recv: %v", err)
	}
	if resp.Error != nil {
		t.Fatalf("unexpected error reply: %+v", resp.Error)
	}
	want, _ := json.Marshal(params)
	if !jsonEqual(resp.Result, want) {
		t.Fatalf("result = %s, want %s", resp.Result, want)
	}
	return resp
}

func jsonEqual(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return string(xa) == string(ya)
}

func testRoundTrip(t *testing.T, start StartFunc) {
	dev := start(t, NewEchoDevice())
	c := dial(t, dev, transport.Options{})
	resp := roundTrip(t, c, map[string]any{"x": 1, "s": "hello"})
	if resp.Src != "testdev" {
		t.Errorf("reply src = %q, want testdev", resp.Src)
	}
	// A second call on the same connection.
	roundTrip(t, c, []int{1, 2, 3})
	// Unknown method: the error reply comes back as a frame, not a transport error.
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	req := request("No.Such", nil)
	if err := c.Send(ctx, req); err != nil {
		t.Fatalf("send: %v", err)
	}
	r, err := recvID(ctx, c, req.ID)
	if err != nil {
		t.Fatalf("recv: %v", err)
	}
	if r.Error == nil || r.Error.Code != 404 {
		t.Fatalf("want 404 error reply, got %+v", r)
	}
}

func testNonASCII(t *testing.T, start StartFunc) {
	dev := start(t, NewEchoDevice())
	c := dial(t, dev, transport.Options{})
	roundTrip(t, c, map[string]any{"name": "Grüße 🚀", "ctl": "a\"b\\c\n\x01"})
}

func testBigFrame(t *testing.T, start StartFunc) {
	dev := start(t, NewEchoDevice())
	c := dial(t, dev, transport.Options{})
	// A request frame of just under 4 KiB, the device's frame limit,
	// and one of exactly 4096 bytes.
	for _, total := range []int{4000, 4096} {
		req := request(MethodEcho, map[string]string{"data": ""})
		base, _ := frame.Marshal(req)
		pad := total - len(base)
		params := map[string]string{"data": strings.Repeat("A", pad)}
		req = request(MethodEcho, params)
		if b, _ := frame.Marshal(req); len(b) != total {
			t.Fatalf("built a %d-byte frame, want %d", len(b), total)
		}
		ctx, cancel := context.WithTimeout(context.Background(), Timeout)
		if err := c.Send(ctx, req); err != nil {
			cancel()
			t.Fatalf("send %d: %v", total, err)
		}
		resp, err := recvID(ctx, c, req.ID)
		cancel()
		if err != nil {
			t.Fatalf("recv %d: %v", total, err)
		}
		var got map[string]string
		if err := json.Unmarshal(resp.Result, &got); err != nil || got["data"] != params["data"] {
			t.Fatalf("%d-byte frame: echo mismatch (%d bytes back, err %v)", total, len(got["data"]), err)
		}
	}
}

func testJunk(t *testing.T, start StartFunc) {
	dev := start(t, NewEchoDevice())
	if dev.Log == nil {
		t.Skip("transport has no device log channel")
	}
	var mu sync.Mutex
	var lines []string
	c := dial(t, dev, transport.Options{DeviceLog: func(l string) {
		mu.Lock()
		lines = append(lines, l)
		mu.Unlock()
	}})
	roundTrip(t, c, 1)
	junk := []string{
		"[Nov 27 10:00:00.123] mgos_ota_common.c:123 Arming commit watchdog for 300 seconds",
		`{"this": "looks like json but has no crc"`,
		`"""{"id":12}deadbeef"""`, // a frame whose CRC does not match
		"{}",
		"\x00\x01\x02 binary noise \xff\xfe",
	}
	for _, j := range junk {
		dev.Log(j)
		roundTrip(t, c, map[string]string{"after": j[:min(4, len(j))]})
	}
	deadline := time.Now().Add(Timeout)
	for {
		mu.Lock()
		all := strings.Join(lines, "\n")
		mu.Unlock()
		if strings.Contains(all, "Arming commit watchdog") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("device log line not passed to Options.DeviceLog; got %q", all)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func testCancelPending(t *testing.T, start StartFunc) {
	d := NewEchoDevice()
	dev := start(t, d)
	c := dial(t, dev, transport.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	req := request(MethodBlock, "slow")
	go func() {
		if err := c.Send(ctx, req); err != nil {
			done <- err
			return
		}
		_, err := recvID(ctx, c, req.ID)
		done <- err
	}()
	select {
	case <-d.Entered:
	case <-time.After(Timeout):
		t.Fatal("request never reached the device")
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("pending call returned %v, want context.Canceled", err)
		}
	case <-time.After(Timeout):
		t.Fatal("ctx cancel did not end the pending call")
	}
	close(d.Release)
	// The connection stays usable after a cancelled call.
	roundTrip(t, c, "still alive")
}

func testAnswersWhileBlocked(t *testing.T, start StartFunc) {
	d := NewEchoDevice()
	dev := start(t, d)
	c := dial(t, dev, transport.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	slow := request(MethodBlock, "slow")
	sendErr := make(chan error, 1)
	go func() { sendErr <- c.Send(ctx, slow) }()
	select {
	case <-d.Entered:
	case <-time.After(Timeout):
		t.Fatal("request never reached the device")
	}
	// While one request is pending on the device (as OTA.Update is during a
	// download), another on the same link must be answered. Sends may block
	// (HTTP waits for its reply) so they run concurrently here.
	fast := request(MethodEcho, "fast")
	go func() {
		if err := c.Send(ctx, fast); err != nil {
			sendErr <- err
		}
	}()
	got := map[int64]*frame.Frame{}
	for len(got) < 2 {
		if len(got) == 1 && got[fast.ID] != nil {
			close(d.Release)
		}
		f, err := c.Recv(ctx)
		if err != nil {
			select {
			case e := <-sendErr:
				if e != nil {
					t.Fatalf("send: %v", e)
				}
			default:
			}
			t.Fatalf("recv (have %d replies): %v", len(got), err)
		}
		if f.ID == slow.ID && got[fast.ID] == nil {
			t.Fatal("blocked request answered before the fast one: device side serialises requests")
		}
		got[f.ID] = f
	}
	if err := <-sendErr; err != nil {
		t.Fatalf("send: %v", err)
	}
}

func testCloseUnblocksRecv(t *testing.T, start StartFunc) {
	dev := start(t, NewEchoDevice())
	c := dial(t, dev, transport.Options{})
	roundTrip(t, c, 1)
	done := make(chan error, 1)
	go func() {
		_, err := c.Recv(context.Background())
		done <- err
	}()
	time.Sleep(20 * time.Millisecond) // let Recv block; the assertion does not depend on it
	if err := c.Close(); err != nil {
		t.Logf("close: %v", err)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Recv after Close returned no error")
		}
	case <-time.After(Timeout):
		t.Fatal("Close did not unblock Recv")
	}
}

func testDoubleClose(t *testing.T, start StartFunc) {
	dev := start(t, NewEchoDevice())
	c := dial(t, dev, transport.Options{})
	roundTrip(t, c, 1)
	c.Close()
	c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	if err := c.Send(ctx, request(MethodEcho, 1)); err == nil {
		t.Fatal("Send after Close succeeded")
	}
	if _, err := c.Recv(ctx); !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("Recv after Close = %v, want ErrClosed", err)
	}
}

func testConcurrent(t *testing.T, start StartFunc) {
	dev := start(t, NewEchoDevice())
	c := dial(t, dev, transport.Options{})
	const n = 40
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	want := map[int64]string{}
	reqs := make([]*frame.Frame, n)
	for i := range reqs {
		v := fmt.Sprintf("call-%d", i)
		reqs[i] = request(MethodEcho, v)
		want[reqs[i].ID] = v
	}
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for _, r := range reqs {
		wg.Add(1)
		go func(r *frame.Frame) {
			defer wg.Done()
			if err := c.Send(ctx, r); err != nil {
				errs <- err
			}
		}(r)
	}
	for got := 0; got < n; got++ {
		f, err := c.Recv(ctx)
		if err != nil {
			select {
			case e := <-errs:
				t.Fatalf("send: %v", e)
			default:
			}
			t.Fatalf("recv after %d replies: %v", got, err)
		}
		v, ok := want[f.ID]
		if !ok {
			t.Fatalf("reply with unknown or duplicate id %d", f.ID)
		}
		var s string
		if err := json.Unmarshal(f.Result, &s); err != nil || s != v {
			t.Fatalf("reply to id %d = %s, want %q", f.ID, f.Result, v)
		}
		delete(want, f.ID)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatalf("send: %v", e)
	}
}

func testTwoClients(t *testing.T, start StartFunc) {
	dev := start(t, NewEchoDevice())
	a := dial(t, dev, transport.Options{})
	roundTrip(t, a, "a1")
	// Serial links have one peer; closing the first client frees the link.
	a.Close()
	b := dial(t, dev, transport.Options{})
	roundTrip(t, b, "b1")
}

// LeakCheck fails t if goroutines started during the test are still
// running when it ends, but for those LeakIgnores names. Call it first, so
// that it runs after every other cleanup.
func LeakCheck(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent() // goroutines from before this test
	t.Cleanup(func() { goleak.VerifyNone(t, LeakIgnores(ignore)...) })
}

// LeakIgnores returns opts and the goroutines every leak check of a test
// that uses MQTT lets run on: the MQTT library's Publish and
// SubscribeMultiple calls that a lost broker connection stranded. paho
// v1.5.1 holds each for its write timeout (10 s) and then ends it; nobody
// waits for them (docs/transports.md, "One broker connection for many
// devices"). A call blocked there always ends, so ignoring it hides no
// leak.
func LeakIgnores(opts ...goleak.Option) []goleak.Option {
	return append(opts,
		goleak.IgnoreTopFunction("github.com/eclipse/paho%2emqtt%2egolang.(*client).Publish"),
		goleak.IgnoreTopFunction("github.com/eclipse/paho%2emqtt%2egolang.(*client).SubscribeMultiple"),
	)
}

// Ctx returns a context that ends after Timeout or with the test.
func Ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	t.Cleanup(cancel)
	return ctx
}

// MustParseURL parses s or fails t.
func MustParseURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
