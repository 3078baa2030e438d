package rpc_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/mqtt"
	"github.com/otactl/otactl/pkg/transport/mqtt/mqtttest"
	"github.com/otactl/otactl/pkg/transport/transporttest"
)

// mqttDevice serves an rpc.Server with src name as device id on the broker.
func mqttDevice(t *testing.T, brokerURL, id, name string) {
	t.Helper()
	s := rpc.NewServer(name)
	s.Handle("Sys.GetInfo", func(ctx context.Context, r *rpc.Request) (any, error) {
		return map[string]string{"id": name}, nil
	})
	s.Handle("Block", func(ctx context.Context, r *rpc.Request) (any, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	srv, err := mqtt.Serve(transporttest.Ctx(t), transporttest.MustParseURL(t, brokerURL), id, s, transport.Options{})
	if err != nil {
		t.Fatalf("Serve: %v", err)
	}
	t.Cleanup(func() { srv.Close() })
}

func settle(t *testing.T, c *rpc.Client) error {
	t.Helper()
	if !c.Shared() {
		t.Fatal("an MQTT client does not say it is on a shared medium")
	}
	return c.Settle(transporttest.Ctx(t), c.SettleTime())
}

// One device on the broker: settling finds nothing.
func TestSettleOneDevice(t *testing.T) {
	bu := mqtttest.StartBroker(t)
	transporttest.LeakCheck(t)
	mqttDevice(t, bu, "solo", "solo")
	c := dialClient(t, mqtt.Dial, bu+"/solo")
	for range 3 {
		if _, err := c.Call(transporttest.Ctx(t), "Sys.GetInfo", nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := settle(t, c); err != nil {
		t.Fatalf("Settle with one device = %v", err)
	}
	if err := c.Err(); err != nil {
		t.Fatalf("Err = %v", err)
	}
}

// Two devices with one id: the second reply to a request is noticed, and
// from then on every call fails, pending ones included, with a message
// that says what to do (issue 7, defect 9).
func TestTwoDevicesWithOneID(t *testing.T) {
	bu := mqtttest.StartBroker(t)
	transporttest.LeakCheck(t)
	mqttDevice(t, bu, "twin", "twin")
	mqttDevice(t, bu, "twin", "twin")
	c := dialClient(t, mqtt.Dial, bu+"/twin")

	// A call left pending on both devices fails as soon as the duplicate
	// of another call is seen.
	blocked := make(chan error, 1)
	go func() {
		_, err := c.Call(transporttest.Ctx(t), "Block", nil)
		blocked <- err
	}()
	// The first reply may already come after a duplicate (of nothing yet:
	// the first call), so this call itself may succeed.
	_, _ = c.Call(transporttest.Ctx(t), "Sys.GetInfo", nil)
	err := settle(t, c)
	var de *rpc.DuplicateReplyError
	if !errors.As(err, &de) || !errors.Is(err, rpc.ErrDuplicateReply) {
		t.Fatalf("Settle = %v, want a DuplicateReplyError", err)
	}
	want := "two devices answered request "
	if !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), "(Sys.GetInfo) for device id twin: more than one device uses this id on the broker; give each device a unique id") {
		t.Fatalf("message: %s", err)
	}
	if err := <-blocked; !errors.Is(err, rpc.ErrDuplicateReply) {
		t.Fatalf("pending call = %v, want ErrDuplicateReply", err)
	}
	if _, err := c.Call(transporttest.Ctx(t), "Sys.GetInfo", nil); !errors.Is(err, rpc.ErrDuplicateReply) {
		t.Fatalf("later call = %v, want ErrDuplicateReply", err)
	}
}

// Two devices listening on one topic that sign their replies with
// different ids (src): replies from two senders mean two devices. Each
// device answers one of two requests only, so no request is answered twice.
func TestRepliesFromTwoSenders(t *testing.T) {
	bu := mqtttest.StartBroker(t)
	transporttest.LeakCheck(t)
	for _, name := range []string{"devA", "devB"} {
		h := transport.HandlerFunc(func(ctx context.Context, req *frame.Frame) *frame.Frame {
			if req.Method != "Ask."+name {
				return nil
			}
			return &frame.Frame{ID: req.ID, Src: name, Dst: req.Src, Result: json.RawMessage(`1`)}
		})
		srv, err := mqtt.Serve(transporttest.Ctx(t), transporttest.MustParseURL(t, bu), "shared", h, transport.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Close() })
	}
	c := dialClient(t, mqtt.Dial, bu+"/shared")
	if _, err := c.Call(transporttest.Ctx(t), "Ask.devA", nil); err != nil {
		t.Fatal(err)
	}
	_, err := c.Call(transporttest.Ctx(t), "Ask.devB", nil)
	if !errors.Is(err, rpc.ErrDuplicateReply) {
		t.Fatalf("reply from a second sender = %v, want ErrDuplicateReply", err)
	}
	if !strings.Contains(err.Error(), `two devices answered for device id shared (replies from "devA" and "devB", the second to request`) {
		t.Fatalf("message: %s", err)
	}
	if err := settle(t, c); !errors.Is(err, rpc.ErrDuplicateReply) {
		t.Fatalf("Settle = %v", err)
	}
}

// Settle ends with ctx, and the settle time follows the slowest reply.
func TestSettleTime(t *testing.T) {
	bu := mqtttest.StartBroker(t)
	transporttest.LeakCheck(t)
	mqttDevice(t, bu, "solo2", "solo2")
	c := dialClient(t, mqtt.Dial, bu+"/solo2")
	if got := c.SettleTime(); got != rpc.SettleMin {
		t.Fatalf("SettleTime before any reply = %v, want %v", got, rpc.SettleMin)
	}
	if _, err := c.Call(transporttest.Ctx(t), "Sys.GetInfo", nil); err != nil {
		t.Fatal(err)
	}
	if c.SlowestReply() <= 0 {
		t.Fatal("SlowestReply not measured")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Settle(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("Settle with a cancelled ctx = %v", err)
	}
}

// Over one shared broker connection (mqtt.Sessions), two devices with one
// id fail that id's calls only: the device next to them, on the same
// broker connection, goes on answering.
func TestDuplicateStaysWithItsDevice(t *testing.T) {
	bu := mqtttest.StartBroker(t)
	transporttest.LeakCheck(t)
	mqttDevice(t, bu, "twin", "twin")
	mqttDevice(t, bu, "twin", "twin")
	mqttDevice(t, bu, "single", "single")
	p := mqtt.NewSessions(mqtt.SessionsOptions{})
	t.Cleanup(func() { p.Close() })
	twin := dialClient(t, p.Dial, bu+"/twin")
	single := dialClient(t, p.Dial, bu+"/single")
	for i := 0; i < 3 && twin.Err() == nil; i++ {
		_, _ = twin.Call(transporttest.Ctx(t), "Sys.GetInfo", nil)
		_ = settle(t, twin)
	}
	if err := twin.Err(); !errors.Is(err, rpc.ErrDuplicateReply) || !strings.Contains(err.Error(), "device id twin") {
		t.Fatalf("twin: Err = %v, want ErrDuplicateReply", err)
	}
	for range 3 {
		if _, err := single.Call(transporttest.Ctx(t), "Sys.GetInfo", nil); err != nil {
			t.Fatalf("single, next to the twins: %v", err)
		}
	}
	if err := settle(t, single); err != nil {
		t.Fatalf("single: Settle = %v", err)
	}
	if st := p.Stats(); st.Connects != 1 || st.Devices != 2 {
		t.Fatalf("stats %+v: want one broker connection for both ids", st)
	}
}
