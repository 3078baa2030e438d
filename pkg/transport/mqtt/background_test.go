package mqtt

import (
	"context"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/mqtt/mqtttest"
	"github.com/otactl/otactl/pkg/transport/transporttest"
)

// timerCall is one wait the server asked for.
type timerCall struct {
	d time.Duration
	f func()
}

// manualTimers hands every AfterFunc to the test, which fires it.
type manualTimers chan timerCall

func (m manualTimers) afterFunc(d time.Duration, f func()) func() bool {
	m <- timerCall{d, f}
	return func() bool { return false }
}

func (m manualTimers) next(t *testing.T, want time.Duration) timerCall {
	t.Helper()
	select {
	case c := <-m:
		if c.d != want {
			t.Fatalf("the server waits %v, want %v", c.d, want)
		}
		return c
	case <-time.After(wait):
		t.Fatalf("the server asked for no wait (want %v)", want)
	}
	return timerCall{}
}

// A Background Serve starts without its broker, retries with a doubling
// wait up to the max (every wait through AfterFunc), connects and
// subscribes once the broker is there, and after losing it starts again
// from the min.
func TestServeBackground(t *testing.T) {
	noLeaks(t)
	b := mqtttest.Start(t, mqtttest.Config{})
	b.Close()
	timers := make(manualTimers, 1)
	so := ServeOptions{Background: true, MinReconnect: time.Second, MaxReconnect: 4 * time.Second, AfterFunc: timers.afterFunc}
	s, err := ServeWith(ctxT(t), mustURL(t, b.URL), "dev1", transporttest.NewEchoDevice(), transport.Options{}, so)
	if err != nil {
		t.Fatalf("ServeWith, broker down: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	if s.Connected() {
		t.Fatal("connected to a broker that is down")
	}
	for _, d := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second} {
		timers.next(t, d).f() // the attempt fails: the next wait is longer
	}
	capped := timers.next(t, 4*time.Second) // no longer than the max
	b2 := mqtttest.Start(t, mqtttest.Config{Addr: b.Addr})
	capped.f()
	waitConnected(t, s, true)
	c := dial(t, b2.URL+"/dev1", transport.Options{})
	echoCall(t, c, "after the broker came up")

	b2.Close()
	waitConnected(t, s, false)
	b3 := mqtttest.Start(t, mqtttest.Config{Addr: b.Addr})
	timers.next(t, time.Second).f() // from the min again
	waitConnected(t, s, true)
	echoCall(t, dial(t, b3.URL+"/dev1", transport.Options{}), "after a broker restart")
}

func waitConnected(t *testing.T, s *Server, want bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for s.Connected() != want {
		if time.Now().After(deadline) {
			t.Fatalf("Connected() stayed %v", !want)
		}
		time.Sleep(time.Millisecond)
	}
}

// Without Background, a broker that is down is Serve's error; with it, a
// ctx that ended still is.
func TestServeBackgroundErrors(t *testing.T) {
	noLeaks(t)
	b := mqtttest.Start(t, mqtttest.Config{})
	b.Close()
	if s, err := Serve(ctxT(t), mustURL(t, b.URL), "dev1", transporttest.NewEchoDevice(), transport.Options{}); err == nil {
		s.Close()
		t.Fatal("Serve succeeded with the broker down")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if s, err := ServeWith(ctx, mustURL(t, b.URL), "dev1", transporttest.NewEchoDevice(), transport.Options{}, ServeOptions{Background: true}); err == nil {
		s.Close()
		t.Fatal("ServeWith succeeded with a cancelled ctx")
	}
}

// Jitter spreads a wait within ± the fraction.
func TestServeJitter(t *testing.T) {
	s := &Server{so: ServeOptions{Jitter: 0.1}.withDefaults()}
	lo, hi := 2*time.Second, time.Duration(0)
	for range 1000 {
		d := s.jitter(2 * time.Second)
		lo, hi = min(lo, d), max(hi, d)
	}
	if lo < 1800*time.Millisecond || hi > 2200*time.Millisecond || hi-lo < 200*time.Millisecond {
		t.Fatalf("waits of 2s ±10%% spread over [%v, %v]", lo, hi)
	}
}
