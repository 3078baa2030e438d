package emulator

import (
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// refuseLinger bounds how long a refused connection is kept to deliver its
// 503 answer: the answer is written, the sending side shut, and what the
// client still sends is read and dropped (closing with unread data would
// reset the connection and could lose the answer) until it closes or this
// time is up.
const refuseLinger = 250 * time.Millisecond

// refusal is the answer to a connection over the limit.
const refusal = "HTTP/1.1 503 Service Unavailable\r\n" +
	"Content-Type: text/plain\r\n" +
	"Connection: close\r\n" +
	"Retry-After: 1\r\n" +
	"Content-Length: 54\r\n" +
	"\r\n" +
	"Service Unavailable: too many connections, try again\r\n"

// limitListener serves at most max connections at once: Accept answers a
// connection over the limit with 503 and closes it, without handing it to
// the server, so that a flood of clients cannot queue up.
type limitListener struct {
	net.Listener
	log *slog.Logger

	mu      sync.Mutex
	max     int // connections served at once
	open    int // connections being served
	peak    int // the most connections served at once (tests)
	refused map[net.Conn]struct{}
	wg      sync.WaitGroup
}

func newLimitListener(ln net.Listener, max int, log *slog.Logger) *limitListener {
	return &limitListener{Listener: ln, log: log, max: max, refused: map[net.Conn]struct{}{}}
}

// setMax changes the limit; connections already served stay.
func (l *limitListener) setMax(max int) {
	l.mu.Lock()
	l.max = max
	l.mu.Unlock()
}

// Accept returns the next connection within the limit.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.mu.Lock()
		ok := l.open < l.max
		if ok {
			l.open++
			l.peak = max(l.peak, l.open)
		}
		l.mu.Unlock()
		if ok {
			return &limitConn{Conn: c, release: l.release}, nil
		}
		l.refuse(c)
	}
}

// peakOpen is the most connections served at once so far.
func (l *limitListener) peakOpen() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.peak
}

func (l *limitListener) release() {
	l.mu.Lock()
	l.open--
	l.mu.Unlock()
}

// refuse answers c with 503 and closes it, in the background.
func (l *limitListener) refuse(c net.Conn) {
	l.mu.Lock()
	limit := l.max
	l.refused[c] = struct{}{}
	l.wg.Add(1)
	l.mu.Unlock()
	l.log.Debug("HTTP: too many connections: refusing one", "limit", limit, "remote", c.RemoteAddr().String())
	go func() {
		defer l.wg.Done()
		defer func() {
			l.mu.Lock()
			delete(l.refused, c)
			l.mu.Unlock()
			c.Close()
		}()
		_ = c.SetDeadline(time.Now().Add(refuseLinger))
		if _, err := io.WriteString(c, refusal); err != nil {
			return
		}
		if tc, ok := c.(interface{ CloseWrite() error }); ok {
			_ = tc.CloseWrite()
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(c, 64<<10))
	}()
}

// closeRefused closes the connections being refused and waits for them
// (after the server stopped).
func (l *limitListener) closeRefused() {
	l.mu.Lock()
	for c := range l.refused {
		c.Close()
	}
	l.mu.Unlock()
	l.wg.Wait()
}

// limitConn gives its slot back when closed (by the server, or by the
// WebSocket handler that took it over).
type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
