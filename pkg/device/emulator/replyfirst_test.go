package emulator

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/mqtt/mqtttest"
)

// lateLink is a real listener (HTTP and WebSocket, MQTT, serial) whose transport writes
// one chosen call's reply late: after the device's handler returned it,
// lateLink runs before (the test fires the reboot timer on the ManualClock
// there) and then holds the reply until the listener is being stopped
// (the reboot has begun) or holdFor passed. A device that reboots before
// its reply is out loses it; one that replies first waits for it.
type lateLink struct {
	Listener
	method  string
	before  func()
	holdFor time.Duration

	mu       sync.Mutex
	stopping chan struct{} // closed when Stop begins; replaced at Start
	held     int           // replies held so far
}

func (l *lateLink) Start(ctx context.Context, h transport.Handler) error {
	l.mu.Lock()
	l.stopping = make(chan struct{})
	l.mu.Unlock()
	return l.Listener.Start(ctx, transport.HandlerFunc(func(ctx context.Context, req *frame.Frame) *frame.Frame {
		resp := h.HandleFrame(ctx, req)
		if resp == nil || req.Method != l.method {
			return resp
		}
		l.mu.Lock()
		l.held++
		stopping := l.stopping
		l.mu.Unlock()
		if l.before != nil {
			l.before()
		}
		select {
		case <-stopping:
			// The device is going down: give its listener the time to
			// close the link before the reply is written.
			time.Sleep(50 * time.Millisecond)
		case <-time.After(l.holdFor):
		}
		return resp
	}))
}

func (l *lateLink) Stop() error {
	l.mu.Lock()
	if l.stopping != nil {
		close(l.stopping)
		l.stopping = nil
	}
	l.mu.Unlock()
	return l.Listener.Stop()
}

// Close releases what the wrapped listener keeps for the device's life
// (the serial pty), as Device.Close does for an unwrapped one.
func (l *lateLink) Close() error {
	if c, ok := l.Listener.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

func (l *lateLink) heldReplies() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.held
}

// A device replies first and reboots afterwards: a reboot a call schedules
// (Sys.Reboot, OTA.Revert, OTA.Update, OTA.End) waits until the transport
// has written that call's reply, even when its timer fires first (here: the
// ManualClock is advanced past RebootAfter between the handler's return and
// the write; Sys.Reboot with delay_ms 0 reboots at once). The reply arrives,
// then the device reboots.
func TestRebootWaitsForTheReplyItFollows(t *testing.T) {
	// Serial too: the pty stays across the reboot (a UART keeps its
	// cable), so a reply written before the reboot is read after it.
	for _, tr := range []string{"http", "ws", "mqtt", "serial"} {
		for _, method := range []string{"Sys.Reboot", "Sys.Reboot delay_ms 0", "OTA.Update", "OTA.End", "OTA.Revert"} {
			t.Run(tr+"/"+method, func(t *testing.T) {
				replyFirst(t, tr, method)
			})
		}
	}
}

func replyFirst(t *testing.T, tr, call string) {
	method, params := call, map[string]any{}
	if call == "Sys.Reboot delay_ms 0" {
		method, params = "Sys.Reboot", map[string]any{"delay_ms": 0}
	}
	l := &lateLink{method: method, holdFor: 300 * time.Millisecond}
	e := newEnv(t, func(c *Config) {
		// Here, after newEnv's leak check is registered: the broker's
		// cleanup runs before it.
		switch tr {
		case "http", "ws":
			l.Listener = NewHTTPListener("127.0.0.1:0", nil)
		case "mqtt":
			ml, err := NewMQTTListener(mqtttest.StartBroker(t), DefaultID, nil)
			if err != nil {
				t.Fatal(err)
			}
			l.Listener = ml
		case "serial":
			l.Listener = NewSerialListener("", nil)
		}
		c.RebootAfter = DefaultRebootAfter
		c.Listeners = []Listener{l}
	})
	if call != "Sys.Reboot delay_ms 0" {
		l.before = e.fireReboot // the reboot is due before the reply is written
	}
	boots := 1
	switch method {
	case "OTA.Update":
		params["url"] = e.serve("/fw.zip", makeBundle(t, fw{version: "2.0.0"}))
		params["commit_timeout"] = 300
	case "OTA.End":
		b := makeBundle(t, fw{version: "2.0.0"})
		e.mustCall("OTA.Begin", map[string]any{"size": len(b), "commit_timeout": 300})
		e.mustCall("OTA.Write", map[string]any{"offset": 0, "data": base64.StdEncoding.EncodeToString(b)})
	case "OTA.Revert":
		e.update(fw{version: "2.0.0"}, 300)
		boots = e.d.State().Boots
	}

	c := dialListener(t, e, tr)
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if _, err := c.Call(ctx, method, params); err != nil && !isDeviceError(err) {
		t.Fatalf("%s over %s: the reply was lost: %v", call, tr, err)
	}
	if n := l.heldReplies(); n != 1 {
		t.Fatalf("the link held %d replies to %s, want 1", n, method)
	}
	s := e.waitBoots(boots + 1)
	if method == "OTA.End" || method == "OTA.Update" {
		if s.Version != "2.0.0" {
			t.Fatalf("after %s: %+v", method, s)
		}
	}
}

// A reply the link never takes keeps the device from rebooting for
// ReplyWaitLimit on its clock, not for ever.
func TestRebootWaitForAReplyIsBounded(t *testing.T) {
	l := &lateLink{Listener: NewHTTPListener("127.0.0.1:0", nil), method: "Sys.Reboot", holdFor: time.Hour}
	var e *env
	e = newEnv(t, func(c *Config) { c.Listeners = []Listener{l} })
	l.before = func() { e.fireReboot() }
	c := dialListener(t, e, "http")
	res := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		defer cancel()
		_, err := c.Call(ctx, "Sys.Reboot", nil)
		res <- err
	}()
	e.waitUntil("the reboot waiting for its reply", func(s State) bool { return l.heldReplies() == 1 && s.RebootPending })
	if s := e.d.State(); !s.Online || s.Boots != 1 {
		t.Fatalf("the device rebooted before its reply was written: %+v", s)
	}
	// Calls meanwhile are in the pre-reboot window.
	_, err := e.call("Sys.GetInfo", nil)
	wantErr(t, err, RebootLockoutCode, "shutting down in 0 ms")
	e.clock.Advance(ReplyWaitLimit - time.Millisecond)
	if s := e.d.State(); s.Boots != 1 || !s.Online {
		t.Fatalf("rebooted before ReplyWaitLimit: %+v", s)
	}
	e.clock.Advance(time.Millisecond)
	e.waitBoots(2)
	if err := <-res; err == nil {
		t.Fatal("the reply the device rebooted over arrived")
	}
}

func isDeviceError(err error) bool {
	var re *rpc.Error
	return errors.As(err, &re)
}
