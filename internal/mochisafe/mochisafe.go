// Package mochisafe works around a deadlock in the in-process MQTT broker
// (github.com/mochi-mqtt/server/v2 v2.7.9) used by the emulator's embedded
// broker and the tests' brokers.
//
// The broker's Close disconnects each listener's clients through
// Clients.GetByListener, which takes the clients' read lock and, holding
// it, takes it again (Clients.Len). A client connection ending at the same
// moment calls Clients.Delete, which waits for the write lock; a waiting
// writer blocks new readers, so the second read lock never comes and Close
// hangs for good (seen as a test hung for 20 minutes).
package mochisafe

import (
	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Listener wraps a broker listener so that closing it disconnects its
// clients from one snapshot of the clients (Clients.GetAll, one read lock),
// not through GetByListener.
type Listener struct {
	listeners.Listener
	srv *mochi.Server
}

// Wrap returns l for srv, safe to close while clients come and go.
func Wrap(srv *mochi.Server, l listeners.Listener) *Listener {
	return &Listener{Listener: l, srv: srv}
}

// Close implements listeners.Listener; the broker's own close function is
// replaced by one that does what it does without the double read lock.
func (l *Listener) Close(listeners.CloseFn) {
	l.Listener.Close(func(id string) {
		for _, cl := range l.srv.Clients.GetAll() {
			if cl.Net.Listener == id && !cl.Closed() {
				_ = l.srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
			}
		}
	})
}
