package serial

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/transporttest"
)

func TestServerHandshakeReply(t *testing.T) {
	host, end := newPeer(t, false)
	srv := Serve(context.Background(), end, transport.HandlerFunc(func(context.Context, *frame.Frame) *frame.Frame { return nil }), transport.Options{})
	defer srv.Close()
	host.write([]byte(Handshake))
	select {
	case <-host.hs:
	case <-time.After(testTimeout):
		t.Fatal("no handshake reply")
	}
}

func TestServerHonoursXOFF(t *testing.T) {
	host, end := newPeer(t, false)
	handled := make(chan struct{}, 1)
	h := transport.HandlerFunc(func(_ context.Context, req *frame.Frame) *frame.Frame {
		handled <- struct{}{}
		return &frame.Frame{ID: req.ID, Result: []byte("1")}
	})
	srv := Serve(context.Background(), end, h, transport.Options{})
	defer srv.Close()
	host.writeAsync(append([]byte{XOFF}, EncodeFrame([]byte(`{"id":4,"method":"X"}`))...))
	<-handled
	select {
	case f := <-host.frames:
		t.Fatalf("device replied %s under XOFF", f)
	case <-time.After(200 * time.Millisecond):
	}
	host.writeAsync([]byte{XON})
	if got := host.nextFrame(t); string(got) != `{"id":4,"result":1}` {
		t.Fatalf("reply %s", got)
	}
}

func TestServerDropsOversizedFrames(t *testing.T) {
	for _, tc := range []struct {
		name  string
		max   int
		limit int
	}{{"default", 0, frame.MaxSize}, {"option", 300, 300}} {
		t.Run(tc.name, func(t *testing.T) {
			host, end := newPeer(t, false)
			srv := Serve(context.Background(), end, transporttest.NewEchoDevice(), transport.Options{MaxFrameSize: tc.max})
			defer srv.Close()
			build := func(id int64, size int) []byte {
				f := &frame.Frame{ID: id, Method: transporttest.MethodEcho, Params: json.RawMessage(`""`)}
				b, _ := frame.Marshal(f)
				f.Params = json.RawMessage(`"` + strings.Repeat("A", size-len(b)) + `"`)
				b, _ = frame.Marshal(f)
				if len(b) != size {
					t.Fatalf("built %d bytes, want %d", len(b), size)
				}
				return EncodeFrame(b)
			}
			host.writeAsync(build(1, tc.limit+1))
			host.writeAsync(build(2, tc.limit))
			got := host.nextFrame(t)
			var f struct{ ID int64 }
			json.Unmarshal(got, &f)
			if f.ID != 2 {
				t.Fatalf("first reply is to id %d, want 2 (the %d-byte frame must be dropped)", f.ID, tc.limit+1)
			}
			select {
			case extra := <-host.frames:
				t.Fatalf("unexpected reply %.60s", extra)
			default:
			}
		})
	}
}

func TestServerCloseCancelsHandlers(t *testing.T) {
	host, end := newPeer(t, false)
	entered := make(chan struct{})
	exited := make(chan struct{})
	h := transport.HandlerFunc(func(ctx context.Context, req *frame.Frame) *frame.Frame {
		close(entered)
		<-ctx.Done()
		close(exited)
		return &frame.Frame{ID: req.ID}
	})
	srv := Serve(context.Background(), end, h, transport.Options{})
	host.writeAsync(EncodeFrame([]byte(`{"id":1,"method":"OTA.Update"}`)))
	<-entered
	if err := srv.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case <-exited:
	default:
		t.Fatal("Close returned before the handler saw its ctx cancelled")
	}
	select {
	case <-srv.Done():
	default:
		t.Fatal("Done not closed after Close")
	}
	if err := srv.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestServerDoneWhenLinkEnds(t *testing.T) {
	host, end := newPeer(t, false)
	srv := Serve(context.Background(), end, transporttest.NewEchoDevice(), transport.Options{})
	defer srv.Close()
	host.conn.Close()
	select {
	case <-srv.Done():
	case <-time.After(testTimeout):
		t.Fatal("Done not closed when the link ended")
	}
}

func TestServerStopsWithCtx(t *testing.T) {
	_, end := newPeer(t, false)
	ctx, cancel := context.WithCancel(context.Background())
	srv := Serve(ctx, end, transporttest.NewEchoDevice(), transport.Options{})
	defer srv.Close()
	cancel()
	select {
	case <-srv.Done():
	case <-time.After(testTimeout):
		t.Fatal("Done not closed when the Serve ctx ended")
	}
}

func TestServerLog(t *testing.T) {
	host, end := newPeer(t, false)
	srv := Serve(context.Background(), end, transporttest.NewEchoDevice(), transport.Options{})
	defer srv.Close()
	go srv.Log("boot: a\x11b\x13c")
	select {
	case l := <-host.lines:
		if l != "boot: abc" {
			t.Fatalf("log line %q", l)
		}
	case <-time.After(testTimeout):
		t.Fatal("no log line")
	}
}

func TestServerIgnoresBadInput(t *testing.T) {
	host, end := newPeer(t, false)
	srv := Serve(context.Background(), end, transporttest.NewEchoDevice(), transport.Options{})
	defer srv.Close()
	host.writeAsync([]byte("garbage\n{\"id\":\"x\"}\n\"\"\"{\"id\":1}00000000\"\"\"\n" +
		string(EncodeFrame([]byte(`[1,2]`))) + string(EncodeFrame([]byte(`{"id":true}`)))))
	host.writeAsync(EncodeFrame([]byte(`{"id":3,"method":"Test.Echo","params":"ok"}`)))
	got := host.nextFrame(t)
	if !strings.Contains(string(got), `"id":3`) || !strings.Contains(string(got), `"result":"ok"`) {
		t.Fatalf("reply %s", got)
	}
}

// sendSignal is a slog handler that signals each frame logged as sent.
type sendSignal chan struct{}

func (s sendSignal) Enabled(context.Context, slog.Level) bool { return true }
func (s sendSignal) WithAttrs([]slog.Attr) slog.Handler       { return s }
func (s sendSignal) WithGroup(string) slog.Handler            { return s }
func (s sendSignal) Handle(_ context.Context, r slog.Record) error {
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "dir" && a.Value.String() == "send" {
			select {
			case s <- struct{}{}:
			default:
			}
		}
		return true
	})
	return nil
}

// A reply held back by XOFF must not keep the reader from answering a
// handshake, nor from seeing the XON that releases the reply.
func TestServerHandshakeWhileReplyWaitsForXON(t *testing.T) {
	host, end := newPeer(t, false)
	sent := make(sendSignal, 10)
	h := transport.HandlerFunc(func(_ context.Context, req *frame.Frame) *frame.Frame {
		return &frame.Frame{ID: req.ID, Result: []byte("1")}
	})
	srv := Serve(context.Background(), end, h, transport.Options{Logger: slog.New(sent)})
	defer srv.Close()
	host.writeAsync(append([]byte{XOFF}, EncodeFrame([]byte(`{"id":4,"method":"X"}`))...))
	<-sent // the reply is being written, and waits for XON
	// The handshake is read whole before the XON is written.
	<-host.writeAsync([]byte(Handshake))
	host.writeAsync([]byte{XON})
	select {
	case <-host.hs:
	case <-time.After(testTimeout):
		t.Fatal("no handshake reply while a reply waited for XON")
	}
	if got := host.nextFrame(t); string(got) != `{"id":4,"result":1}` {
		t.Fatalf("reply %s", got)
	}
}
