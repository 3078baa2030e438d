package emulator

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/all"
)

// cutOffBound is how soon a call cut off by a reboot or a power cut must
// fail. The calls below wait up to callLimit for their reply: a client that
// got an empty answer instead of a broken link would wait that long.
const (
	cutOffBound = 3 * time.Second
	callLimit   = 10 * time.Second
	// Whether the device's answer or the listener's closing reached the
	// client first was a race: each case runs a few times.
	cutOffTries = 4
)

// A call in flight when the device reboots or loses its power is cut off
// as a real device's reboot cuts it: its TCP connection breaks (HTTP: closed
// without an answer; WebSocket: the connection closes), so the client sees a
// lost link at once, never an empty answer that leaves it waiting for its
// timeout (docs/emulator.md, "Reboots").
func TestCallsCutOffByARebootBreakTheLink(t *testing.T) {
	for _, tr := range []string{"http", "ws"} {
		for _, cut := range []string{"reboot", "power cut"} {
			for try := range cutOffTries {
				t.Run(fmt.Sprintf("%s/OTA.Update downloading/%s/%d", tr, cut, try), func(t *testing.T) {
					cutOffDownload(t, tr, cut)
				})
			}
		}
	}
	// A handler that fails on the flash the power cut killed gets no
	// answer out either: the link breaks.
	for _, tr := range []string{"http", "ws"} {
		for try := range cutOffTries {
			t.Run(fmt.Sprintf("%s/OTA.SetBootState at a power cut/%d", tr, try), func(t *testing.T) {
				e := newEnv(t, func(c *Config) {
					c.Listen = "127.0.0.1:0"
					c.Hooks.FlashWrite = PowerCutAt(1, "bootstate")
				})
				c := dialListener(t, e, tr)
				res := make(chan callResult, 1)
				cutAt := time.Now()
				go func() { res <- timedCall(c, "OTA.SetBootState", map[string]any{"commit_timeout": 60}) }()
				wantCutOff(t, res, cutAt)
			})
		}
	}
}

// cutOffDownload has OTA.Update in flight over tr, its download stalled
// after the header, and reboots the device or cuts its power.
func cutOffDownload(t *testing.T, tr, cut string) {
	e := newEnv(t, func(c *Config) {
		c.Listen = "127.0.0.1:0"
		c.RebootDelay = 20 * time.Millisecond
	})
	started := make(chan struct{}, 1)
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	e.setHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100000")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		started <- struct{}{}
		select {
		case <-r.Context().Done():
		case <-stop:
		}
	}))
	c := dialListener(t, e, tr)
	res := make(chan callResult, 1)
	go func() { res <- timedCall(c, "OTA.Update", map[string]any{"url": e.srv.URL + "/fw.zip"}) }()
	select {
	case <-started:
	case <-time.After(waitLimit):
		t.Fatal("the device never started its download")
	}
	cutAt := time.Now()
	if cut == "reboot" {
		e.d.Reboot()
	} else {
		e.d.PowerCut()
	}
	wantCutOff(t, res, cutAt)
}

type callResult struct {
	err     error
	elapsed time.Duration
}

func timedCall(c *rpc.Client, method string, params any) callResult {
	ctx, cancel := context.WithTimeout(context.Background(), callLimit)
	defer cancel()
	start := time.Now()
	_, err := c.Call(ctx, method, params)
	return callResult{err, time.Since(start)}
}

// wantCutOff checks that the call ended with a lost link (not a device
// error, not its timeout) within cutOffBound of cutAt.
func wantCutOff(t *testing.T, res <-chan callResult, cutAt time.Time) {
	t.Helper()
	var r callResult
	select {
	case r = <-res:
	case <-time.After(callLimit + waitLimit):
		t.Fatal("the call never returned")
	}
	after := time.Since(cutAt)
	var le *rpc.LinkError
	var re *rpc.Error
	switch {
	case r.err == nil:
		t.Fatal("the call cut off by the device going away succeeded")
	case errors.As(r.err, &re):
		t.Fatalf("the call cut off by the device going away got a device error: %v", r.err)
	case errors.Is(r.err, context.DeadlineExceeded):
		t.Fatalf("the call cut off by the device going away waited for its timeout (%v): %v", r.elapsed.Round(time.Millisecond), r.err)
	case !errors.As(r.err, &le):
		t.Fatalf("want a lost link (*rpc.LinkError), got %T: %v", r.err, r.err)
	}
	if after > cutOffBound {
		t.Fatalf("the call failed %v after the cut, want within %v: %v", after.Round(time.Millisecond), cutOffBound, r.err)
	}
	t.Logf("cut off after %v: %v", after.Round(time.Millisecond), r.err)
}

// dialListener connects an RPC client to the device's listener for tr.
func dialListener(t *testing.T, e *env, tr string) *rpc.Client {
	t.Helper()
	var port string
	for _, li := range e.d.Listeners() {
		if li.Transport == tr {
			port = li.Addr
		}
	}
	if port == "" {
		t.Fatalf("no %s listener in %v", tr, e.d.Listeners())
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	conn, err := all.NewRegistry().Dial(ctx, port, transport.Options{})
	if err != nil {
		t.Fatalf("dial %s: %v", port, err)
	}
	c := rpc.NewClient(conn, rpc.ClientOptions{})
	t.Cleanup(func() { c.Close() })
	return c
}
