package serial

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const testTimeout = 10 * time.Second

// fakeDevice is a scripted device end on a net.Pipe, for what Serve does not
// do on purpose (stay silent, send XOFF).
type fakeDevice struct {
	t      *testing.T
	conn   net.Conn
	frames chan []byte
	lines  chan string
	hs     chan struct{}
	answer chan bool // handshake answers to give, in order; none = answer
	wmu    sync.Mutex
	done   chan struct{}
}

func newFakeDevice(t *testing.T) (*fakeDevice, net.Conn) {
	return newPeer(t, true)
}

// newPeer returns a scripted end of a pipe and the other end. With
// answerHandshakes it behaves as a device; without, it is a raw host that
// records the EOT frames it gets (as hs).
func newPeer(t *testing.T, answerHandshakes bool) (*fakeDevice, net.Conn) {
	t.Helper()
	a, b := net.Pipe()
	d := &fakeDevice{
		t: t, conn: a,
		frames: make(chan []byte, 100),
		lines:  make(chan string, 100),
		hs:     make(chan struct{}, 100),
		answer: make(chan bool, 100),
		done:   make(chan struct{}),
	}
	go func() {
		defer close(d.done)
		dec := &Decoder{
			OnFrame: func(p []byte) { d.frames <- append([]byte(nil), p...) },
			OnJunk:  func(l string) { d.lines <- l },
			OnHandshake: func() {
				d.hs <- struct{}{}
				ans := answerHandshakes
				select {
				case ans = <-d.answer:
				default:
				}
				if ans {
					d.write([]byte(handshakeReply))
				}
			},
		}
		buf := make([]byte, 1024)
		for {
			n, err := a.Read(buf)
			dec.Feed(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		a.Close()
		<-d.done
	})
	return d, b
}

func (d *fakeDevice) write(b []byte) {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	d.conn.Write(b)
}

// writeAsync writes without blocking the test (net.Pipe writes wait for the
// reader).
func (d *fakeDevice) writeAsync(b []byte) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.write(b)
	}()
	return done
}

func (d *fakeDevice) nextFrame(t *testing.T) []byte {
	t.Helper()
	select {
	case f := <-d.frames:
		return f
	case <-time.After(testTimeout):
		t.Fatal("device got no frame")
		return nil
	}
}

func newTestConn(t *testing.T, rwc io.ReadWriteCloser, opts transport.Options) transport.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, err := NewConn(ctx, rwc, opts)
	if err != nil {
		t.Fatalf("NewConn: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestHandshakeRepeatsUntilAnswered(t *testing.T) {
	dev, end := newFakeDevice(t)
	dev.answer <- false // ignore the first handshake
	start := time.Now()
	newTestConn(t, end, transport.Options{})
	if got := len(dev.hs); got < 2 {
		t.Fatalf("handshake sent %d times, want a retry after no answer", got)
	}
	if el := time.Since(start); el < HandshakeInterval/2 {
		t.Fatalf("retry came after %v, want about %v", el, HandshakeInterval)
	}
}

func TestHandshakeTimeout(t *testing.T) {
	dev, end := newFakeDevice(t)
	for range 50 {
		dev.answer <- false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := NewConn(ctx, end, transport.Options{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("NewConn = %v, want context.DeadlineExceeded", err)
	}
	if !strings.Contains(err.Error(), "no answer from the device") {
		t.Errorf("error does not say what happened: %v", err)
	}
	// The stream was closed.
	if _, err := end.Write([]byte("x")); err == nil {
		t.Fatal("stream still open after failed handshake")
	}
}

func TestSendWireFormat(t *testing.T) {
	dev, end := newFakeDevice(t)
	c := newTestConn(t, end, transport.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	f := &frame.Frame{ID: 1711787588495, Src: "mos", Method: "Sys.GetInfo", Params: json.RawMessage(`{"x":"ü"}`)}
	if err := c.Send(ctx, f); err != nil {
		t.Fatal(err)
	}
	got := dev.nextFrame(t)
	want := `{"src":"mos","id":1711787588495,"method":"Sys.GetInfo","params":{"x":"\u00fc"}}`
	if string(got) != want {
		t.Fatalf("device got %s, want %s", got, want)
	}
}

func TestXOFFPausesSend(t *testing.T) {
	dev, end := newFakeDevice(t)
	lines := make(chan string, 10)
	c := newTestConn(t, end, transport.Options{DeviceLog: func(l string) { lines <- l }})
	// The XOFF has been processed once the log line after it arrived.
	dev.writeAsync([]byte("\x13sync\n"))
	if l := <-lines; l != "sync" {
		t.Fatalf("device log %q", l)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	err := c.Send(ctx, &frame.Frame{ID: 5, Method: "A.B"})
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Send under XOFF = %v, want it to wait until ctx ends", err)
	}
	select {
	case f := <-dev.frames:
		t.Fatalf("device got %s while it held XOFF", f)
	default:
	}
	// XON releases a waiting Send.
	ctx, cancel = context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	sent := make(chan error, 1)
	go func() { sent <- c.Send(ctx, &frame.Frame{ID: 6, Method: "A.B"}) }()
	<-dev.writeAsync([]byte{XON})
	if err := <-sent; err != nil {
		t.Fatalf("Send after XON: %v", err)
	}
	if got := dev.nextFrame(t); !bytes.Contains(got, []byte(`"id":6`)) {
		t.Fatalf("device got %s, want frame 6", got)
	}
}

func TestXOFFInsideFrameAndLog(t *testing.T) {
	dev, end := newFakeDevice(t)
	lines := make(chan string, 10)
	c := newTestConn(t, end, transport.Options{DeviceLog: func(l string) { lines <- l }})
	reply := `{"id":7,"result":true}`
	enc := EncodeFrame([]byte(reply))
	// XOFF and XON in the middle of a frame and a log line are stripped.
	var w []byte
	w = append(w, "boot \x13message\x11\r\n"...)
	w = append(w, enc[:10]...)
	w = append(w, XOFF, XON)
	w = append(w, enc[10:]...)
	dev.writeAsync(w)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	f, err := c.Recv(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if f.ID != 7 || string(f.Result) != "true" {
		t.Fatalf("got %+v", f)
	}
	if l := <-lines; l != "boot message" {
		t.Fatalf("device log %q", l)
	}
	// Writing is allowed again (the last byte seen was XON).
	if err := c.Send(ctx, &frame.Frame{ID: 8}); err != nil {
		t.Fatal(err)
	}
	dev.nextFrame(t)
}

func TestRecvReportsLinkLoss(t *testing.T) {
	dev, end := newFakeDevice(t)
	c := newTestConn(t, end, transport.Options{})
	// A frame queued before the link went away is still delivered.
	<-dev.writeAsync(EncodeFrame([]byte(`{"id":9}`)))
	dev.conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	f, err := c.Recv(ctx)
	if err != nil || f.ID != 9 {
		t.Fatalf("Recv = %+v, %v; want frame 9", f, err)
	}
	_, err = c.Recv(ctx)
	if err == nil || errors.Is(err, transport.ErrClosed) || ctx.Err() != nil {
		t.Fatalf("Recv after link loss = %v, want a link error", err)
	}
	if !errors.Is(err, io.EOF) {
		t.Fatalf("Recv after link loss = %v, want it to wrap io.EOF", err)
	}
	if err := c.Send(ctx, &frame.Frame{ID: 1}); err == nil {
		t.Fatal("Send after link loss succeeded")
	}
}

func TestRecvHonoursCtx(t *testing.T) {
	_, end := newFakeDevice(t)
	c := newTestConn(t, end, transport.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := c.Recv(ctx)
		done <- err
	}()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Recv = %v, want context.Canceled", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("cancel did not end Recv")
	}
}

func TestClientDropsOversizedFrame(t *testing.T) {
	dev, end := newFakeDevice(t)
	lines := make(chan string, 10)
	c := newTestConn(t, end, transport.Options{MaxFrameSize: 100, DeviceLog: func(l string) { lines <- l }})
	big := `{"id":1,"result":"` + strings.Repeat("A", 200) + `"}`
	dev.writeAsync(append(EncodeFrame([]byte(big)), EncodeFrame([]byte(`{"id":2}`))...))
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	// Frame 1 is over the limit: the reply to request 1 is unreadable.
	f, err := c.Recv(ctx)
	var nr *transport.NotRPCError
	if !errors.As(err, &nr) || nr.ID != 1 || !strings.Contains(err.Error(), "larger than the 100-byte limit") {
		t.Fatalf("Recv = %+v, %v; want a NotRPCError for request 1 (frame 1 is over the limit)", f, err)
	}
	f, err = c.Recv(ctx)
	if err != nil || f.ID != 2 {
		t.Fatalf("Recv = %+v, %v; want frame 2", f, err)
	}
	if l := <-lines; !strings.Contains(l, "frame dropped") {
		t.Fatalf("device log %q, want a note about the dropped frame", l)
	}
}
