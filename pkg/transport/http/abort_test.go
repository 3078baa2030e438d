package httptransport

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/transporttest"
)

// A request whose handler aborted its channel (the device went away while
// it was in flight) gets no answer: its connection closes, so the client's
// Send fails at once, on /rpc and on /rpc/<Method>. A handler that merely
// has no reply still gets an empty 200.
func TestAbortedRequestBreaksTheConnection(t *testing.T) {
	transporttest.LeakCheck(t)
	h := transport.HandlerFunc(func(ctx context.Context, req *frame.Frame) *frame.Frame {
		if req.Method == "Test.Abort" {
			transport.ChannelFrom(ctx).Abort()
		}
		return nil
	})
	srv := httptest.NewServer(NewHandler(h, HandlerOptions{}))
	defer srv.Close()

	c, err := Dial(transporttest.Ctx(t), transporttest.MustParseURL(t, srv.URL+"/rpc"), transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	err = c.Send(ctx, &frame.Frame{ID: 7, Method: "Test.Abort"})
	if err == nil || ctx.Err() != nil {
		t.Fatalf("Send of an aborted request = %v (ctx %v), want the connection's end", err, ctx.Err())
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Send failed after %v, want at once", d)
	}
	if errors.Is(err, transport.ErrNotRPC) {
		t.Fatalf("an aborted request read as an answer: %v", err)
	}
	// Not aborted, no reply: an empty 200, nothing queued.
	if err := c.Send(ctx, &frame.Frame{ID: 8, Method: "Test.Silent"}); err != nil {
		t.Fatalf("Send of an unanswered request: %v", err)
	}

	// /rpc/<Method>: the same.
	resp, err := srv.Client().Post(srv.URL+"/rpc/Test.Abort", "application/json", strings.NewReader(`{}`))
	if err == nil {
		resp.Body.Close()
		t.Fatalf("POST /rpc/Test.Abort answered %s, want the connection closed", resp.Status)
	}
	resp, err = srv.Client().Post(srv.URL+"/rpc/Test.Silent", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /rpc/Test.Silent: %s, want 200", resp.Status)
	}
	srv.Client().CloseIdleConnections()
}
