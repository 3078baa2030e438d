package emulator

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/all"
)

// dripper is a raw client that sends a request head, then one byte at a
// time until it is stopped or the server closes the connection.
type dripper struct {
	c      net.Conn
	first  chan string // the first line the server sent ("" if none)
	closed chan error  // the read error that ended the connection
}

func drip(t *testing.T, addr, head string, stop <-chan struct{}) *dripper {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	d := &dripper{c: c, first: make(chan string, 1), closed: make(chan error, 1)}
	go func() {
		if _, err := io.WriteString(c, head); err != nil {
			return
		}
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if _, err := c.Write([]byte("x")); err != nil {
				return
			}
		}
	}()
	go func() {
		// Fails the test if the server never closes (see below).
		_ = c.SetReadDeadline(time.Now().Add(waitLimit))
		r := bufio.NewReader(c)
		line, _ := r.ReadString('\n')
		d.first <- strings.TrimSpace(line)
		_, err := io.Copy(io.Discard, r)
		if err == nil {
			err = io.EOF
		}
		d.closed <- err
	}()
	return d
}

// Issue 7, defect 13: dripping clients cannot hold the emulator's HTTP
// server. A connection over the limit is refused at once with 503; the ones
// served are closed once their header or body has not arrived within the
// bound; an idle kept-alive connection is closed; a WebSocket connection,
// idle meanwhile, is not; and a normal call gets through afterwards.
func TestHTTPLimitsBoundSlowClients(t *testing.T) {
	lim := HTTPLimits{MaxConns: 4, HeaderTimeout: 500 * time.Millisecond, ReadTimeout: 700 * time.Millisecond, IdleTimeout: 500 * time.Millisecond}
	e := newEnv(t, func(c *Config) {
		c.Listen = "127.0.0.1:0"
		c.HTTPLimits = lim
	})
	var httpURL, wsURL string
	for _, li := range e.d.Listeners() {
		switch li.Transport {
		case "http":
			httpURL = li.Addr
		case "ws":
			wsURL = li.Addr
		}
	}
	u, err := url.Parse(httpURL)
	if err != nil {
		t.Fatal(err)
	}
	addr := u.Host
	reg := all.NewRegistry()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()

	// A WebSocket client, one of the 4 connections.
	wconn, err := reg.Dial(ctx, wsURL, transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	wc := rpc.NewClient(wconn, rpc.ClientOptions{})
	defer wc.Close()
	if _, err := wc.Call(ctx, "Sys.GetInfo", nil); err != nil {
		t.Fatalf("WebSocket call: %v", err)
	}

	// An idle kept-alive connection: one request, then nothing.
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	body := `{"id":1,"method":"Sys.GetInfo"}`
	fmt.Fprintf(idle, "POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	idleDone := make(chan error, 1)
	go func() {
		_ = idle.SetReadDeadline(time.Now().Add(waitLimit))
		r := bufio.NewReader(idle)
		line, err := r.ReadString('\n')
		if err != nil || !strings.Contains(line, "200") {
			idleDone <- fmt.Errorf("no answer to the request: %q %v", line, err)
			return
		}
		_, err = io.Copy(io.Discard, r)
		idleDone <- err
	}()

	// 60 dripping clients: half drip their header, half their body.
	stop := make(chan struct{})
	defer close(stop)
	const n = 60
	var drippers []*dripper
	for i := range n {
		head := "POST /rpc HTTP/1.1\r\nHost: x\r\nX-Slow: "
		if i%2 == 1 {
			head = "POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Length: 4000\r\n\r\n{"
		}
		drippers = append(drippers, drip(t, addr, head, stop))
	}
	refused := 0
	for i, d := range drippers {
		first := <-d.first
		if strings.HasPrefix(first, "HTTP/1.1 503") {
			refused++
		}
		if err := <-d.closed; errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
			t.Fatalf("dripping client %d was never closed (first line %q)", i, first)
		}
	}
	// The limit held: never more than MaxConns connections were served at
	// once (the WebSocket connection, for a while the idle one, and the
	// drippers that got a slot), every dripper served was closed by its
	// header or read timeout (above), and the others were refused with 503
	// at once. How many got a slot depends on how fast the 60 connect
	// compared with the 500 ms after which a slot frees: on a loaded
	// machine more may; most are refused all the same.
	var hl *HTTPListener
	for _, l := range e.d.listeners {
		if h, ok := l.(*HTTPListener); ok {
			hl = h
		}
	}
	if hl == nil {
		t.Fatal("no HTTP listener")
	}
	hl.mu.Lock()
	peak := hl.ln.peakOpen()
	hl.mu.Unlock()
	if peak > lim.MaxConns {
		t.Fatalf("%d connections served at once, more than the limit %d", peak, lim.MaxConns)
	}
	if refused < n/2 {
		t.Fatalf("only %d of %d dripping clients refused with 503", refused, n)
	}
	if err := <-idleDone; isTimeout(err) {
		t.Fatal("the idle kept-alive connection was never closed")
	}

	// The WebSocket connection lived through all that (longer than the
	// read and idle timeouts) and still works; so does plain HTTP.
	if _, err := wc.Call(ctx, "Sys.GetInfo", nil); err != nil {
		t.Fatalf("WebSocket call after the flood: %v", err)
	}
	hconn, err := reg.Dial(ctx, httpURL, transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	hc := rpc.NewClient(hconn, rpc.ClientOptions{})
	defer hc.Close()
	if _, err := hc.Call(ctx, "OTA.GetBootState", nil); err != nil {
		t.Fatalf("HTTP call after the flood: %v", err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// The limits have defaults a small device would have.
func TestHTTPLimitsDefaults(t *testing.T) {
	lim := HTTPLimits{}.withDefaults()
	if lim.MaxConns != DefaultHTTPMaxConns || lim.HeaderTimeout != DefaultHTTPHeaderTimeout ||
		lim.ReadTimeout != DefaultHTTPReadTimeout || lim.IdleTimeout != DefaultHTTPIdleTimeout {
		t.Fatalf("%+v", lim)
	}
}
