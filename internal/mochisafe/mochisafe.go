// Package mochisafe is the TCP listener of the in-process MQTT brokers
// (github.com/mochi-mqtt/server/v2 v2.7.9): the emulator's embedded broker
// and the tests' brokers. It replaces mochi's listeners.TCP, whose Close
// has two defects:
//
//   - It disconnects the listener's clients through Clients.GetByListener,
//     which takes the clients' read lock and, holding it, takes it again
//     (Clients.Len). A client connection ending at the same moment calls
//     Clients.Delete, which waits for the write lock; a waiting writer
//     blocks new readers, so the second read lock never comes and Close
//     hangs for good (seen as a test hung for 20 minutes).
//   - It disconnects the clients before it closes its listening socket. A
//     connection accepted in between is dropped without being served or
//     closed, so the client that made it waits for a CONNACK until its own
//     deadline (a client re-dialling a restarted broker lost 3 s this way,
//     about one restart in twenty).
//
// A Listener stops like a real broker that is shut down: it first closes
// its listening socket (new connections are refused), then disconnects its
// clients from one snapshot of the broker's clients, then closes every
// connection it accepted that is still open (one whose CONNECT was still
// being read, or one that became a client after the snapshot), and waits
// for the goroutines it started. See docs/development.md ("Real-broker
// tests").
package mochisafe

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Listener is a broker listener on TCP (with TLS when its config has a
// TLSConfig). It implements listeners.Listener; add it to its server with
// srv.AddListener, which opens it.
type Listener struct {
	srv  *mochi.Server
	id   string
	addr string
	tls  *tls.Config
	log  *slog.Logger

	mu      sync.Mutex
	ln      net.Listener
	closed  bool                  // Close has begun: nothing more is accepted or served
	conns   map[net.Conn]struct{} // accepted and not yet ended, raw TCP
	running sync.WaitGroup        // Serve's loop and the connections' goroutines
}

// NewTCP returns a listener for srv configured by c (ID, Address, and
// TLSConfig; c.Type is ignored).
func NewTCP(srv *mochi.Server, c listeners.Config) *Listener {
	return &Listener{srv: srv, id: c.ID, addr: c.Address, tls: c.TLSConfig, conns: map[net.Conn]struct{}{}}
}

// ID implements listeners.Listener.
func (l *Listener) ID() string { return l.id }

// Protocol implements listeners.Listener.
func (l *Listener) Protocol() string { return "tcp" }

// Address returns the address the listener listens on once open (a ":0"
// port resolved), and the configured one before.
func (l *Listener) Address() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ln != nil {
		return l.ln.Addr().String()
	}
	return l.addr
}

// Init implements listeners.Listener: it opens the listening socket.
func (l *Listener) Init(log *slog.Logger) error {
	ln, err := net.Listen("tcp", l.addr)
	if err != nil {
		return err // "listen tcp ADDR: …"; the broker's owner says whose
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.log = log
	l.ln = ln
	return nil
}

// Serve implements listeners.Listener: it accepts connections until Close
// and hands each to establish on its own goroutine.
func (l *Listener) Serve(establish listeners.EstablishFn) {
	l.mu.Lock()
	if l.closed || l.ln == nil {
		l.mu.Unlock()
		return
	}
	ln := l.ln
	l.running.Add(1)
	l.mu.Unlock()
	defer l.running.Done()

	for {
		raw, err := ln.Accept()
		if err != nil {
			l.mu.Lock()
			closing := l.closed
			l.mu.Unlock()
			if !closing {
				l.log.Warn("mqtt listener stopped accepting", "listener", l.id, "error", err)
			}
			return
		}
		l.mu.Lock()
		if l.closed {
			// Accepted while stopping: the socket is closed at once,
			// never left waiting for a CONNACK that will not come.
			l.mu.Unlock()
			_ = raw.Close()
			continue
		}
		l.conns[raw] = struct{}{}
		l.running.Add(1)
		l.mu.Unlock()

		go l.serveConn(establish, raw)
	}
}

// serveConn runs the broker's session on raw until it ends, then forgets
// (and closes) raw.
func (l *Listener) serveConn(establish listeners.EstablishFn, raw net.Conn) {
	defer l.running.Done()
	var c net.Conn = raw
	if l.tls != nil {
		c = tls.Server(raw, l.tls)
	}
	err := establish(l.id, c)
	_ = raw.Close()
	l.mu.Lock()
	delete(l.conns, raw)
	closing := l.closed
	l.mu.Unlock()
	if err != nil && !closing && !errors.Is(err, net.ErrClosed) {
		l.log.Debug("mqtt client connection ended", "listener", l.id, "error", err)
	}
}

// Close implements listeners.Listener. It ignores the broker's close
// function (whose GetByListener can deadlock, see the package comment)
// and stops in the order of a real broker: listening socket, clients,
// every other accepted connection; it returns when the listener's
// goroutines have ended. Closing twice is harmless.
func (l *Listener) Close(listeners.CloseFn) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		l.running.Wait()
		return
	}
	l.closed = true
	ln := l.ln
	l.mu.Unlock()

	if ln != nil {
		_ = ln.Close() // from here a new connection is refused
	}
	for _, cl := range l.srv.Clients.GetAll() {
		if cl.Net.Listener == l.id && !cl.Closed() {
			_ = l.srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
	l.mu.Lock()
	open := make([]net.Conn, 0, len(l.conns))
	for c := range l.conns {
		open = append(open, c)
	}
	l.mu.Unlock()
	for _, c := range open {
		_ = c.Close()
	}
	l.running.Wait()
}
