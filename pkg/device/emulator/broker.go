package emulator

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/otactl/otactl/internal/mochisafe"
)

// DefaultEmbeddedBroker is the address of "--mqtt-broker embedded".
const DefaultEmbeddedBroker = "127.0.0.1:1883"

// embeddedMaxPending bounds the messages the embedded broker queues for one
// client (mochi's default, 8192, reserves 64 KiB a client: a quarter of a
// device's memory budget in a host of a thousand; mosquitto's default
// max_queued_messages is 1000).
const embeddedMaxPending = 1024

// parseEmbedded reports whether spec names an embedded broker ("embedded"
// or "embedded:ADDR") and its address.
func parseEmbedded(spec string) (addr string, ok bool) {
	if spec != "embedded" && !strings.HasPrefix(spec, "embedded:") {
		return "", false
	}
	addr = strings.TrimPrefix(strings.TrimPrefix(spec, "embedded"), ":")
	if addr == "" {
		addr = DefaultEmbeddedBroker
	}
	return addr, true
}

// embeddedBroker is an MQTT broker in the emulator's process (mochi-mqtt),
// for "--mqtt-broker embedded". Its owner (a Host, or a Device started on
// its own) starts it once and closes it after its devices; devices attach
// to it as clients, one connection each, and their reboots leave it up.
type embeddedBroker struct {
	addr string
	tls  *tls.Config // the listener's; nil: plain

	mu  sync.Mutex
	srv *mochi.Server
	url *url.URL
}

func newEmbeddedBroker(addr string, tlsConf *tls.Config) *embeddedBroker {
	return &embeddedBroker{addr: addr, tls: tlsConf}
}

// start listens and serves; it does nothing if the broker runs already.
func (b *embeddedBroker) start() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.srv != nil {
		return nil
	}
	caps := mochi.NewDefaultServerCapabilities()
	caps.MaximumClientWritesPending = embeddedMaxPending
	srv := mochi.New(&mochi.Options{Logger: slog.New(slog.DiscardHandler), InlineClient: false, Capabilities: caps})
	if err := srv.AddHook(new(allowAll), nil); err != nil {
		return fmt.Errorf("embedded MQTT broker: %w", err)
	}
	tcp := mochisafe.NewTCP(srv, listeners.Config{ID: "emulator", Address: b.addr, TLSConfig: b.tls})
	if err := srv.AddListener(tcp); err != nil {
		return fmt.Errorf("embedded MQTT broker: listening on %s: %w", b.addr, err)
	}
	if err := srv.Serve(); err != nil {
		_ = srv.Close()
		return fmt.Errorf("embedded MQTT broker: %w", err)
	}
	b.srv = srv
	b.addr = tcp.Address() // a ":0" port is chosen once
	b.url = &url.URL{Scheme: b.scheme(), Host: b.addr}
	return nil
}

func (b *embeddedBroker) scheme() string {
	if b.tls != nil {
		return "mqtts"
	}
	return "mqtt"
}

// URL returns the broker's URL: its real address once started, the
// configured one before.
func (b *embeddedBroker) URL() *url.URL {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.url != nil {
		u := *b.url
		return &u
	}
	return &url.URL{Scheme: b.scheme(), Host: b.addr}
}

// clients is the number of clients connected to the broker whose client
// id starts with prefix.
func (b *embeddedBroker) clients(prefix string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.srv == nil {
		return 0
	}
	n := 0
	for id, cl := range b.srv.Clients.GetAll() {
		if strings.HasPrefix(id, prefix) && !cl.Closed() {
			n++
		}
	}
	return n
}

// close stops the broker (its clients are disconnected).
func (b *embeddedBroker) close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.srv == nil {
		return nil
	}
	err := b.srv.Close()
	b.srv = nil
	return err
}

// allowAll lets every client connect and use every topic (the embedded
// broker is for loopback testing).
type allowAll struct{ mochi.HookBase }

func (*allowAll) ID() string { return "emulator-allow-all" }

func (*allowAll) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck
}

func (*allowAll) OnConnectAuthenticate(*mochi.Client, packets.Packet) bool { return true }

func (*allowAll) OnACLCheck(*mochi.Client, string, bool) bool { return true }
