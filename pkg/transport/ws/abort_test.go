package ws

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/transporttest"
)

// A request whose handler aborted its channel (the device went away while
// it was in flight) closes the WebSocket connection: the client's Recv fails
// at once instead of waiting for a reply that cannot come.
func TestAbortedRequestClosesTheConnection(t *testing.T) {
	transporttest.LeakCheck(t)
	echo := transporttest.NewEchoDevice()
	h := transport.HandlerFunc(func(ctx context.Context, req *frame.Frame) *frame.Frame {
		if req.Method == "Test.Abort" {
			transport.ChannelFrom(ctx).Abort()
			return nil
		}
		return echo.HandleFrame(ctx, req)
	})
	d := startShared(t, h, false)
	c := dial(t, wsURL(d.srv)+"/rpc", transport.Options{})
	echoFrame(t, c)
	if err := c.Send(transporttest.Ctx(t), &frame.Frame{ID: 9, Method: "Test.Abort"}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	f, err := c.Recv(ctx)
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Recv after an aborted request = %v, %v; want the connection closed", f, err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("Recv failed after %v, want at once", el)
	}
}

func echoFrame(t *testing.T, c transport.Conn) {
	t.Helper()
	ctx := transporttest.Ctx(t)
	req := &frame.Frame{ID: 1, Method: transporttest.MethodEcho, Params: []byte(`"x"`)}
	if err := c.Send(ctx, req); err != nil {
		t.Fatal(err)
	}
	if resp, err := c.Recv(ctx); err != nil || resp.ID != 1 {
		t.Fatalf("echo: %v %v", resp, err)
	}
}
