// Package mqtttest starts MQTT brokers for tests: an in-process
// github.com/mochi-mqtt/server/v2 broker on 127.0.0.1 (plain, with a
// user/password ledger, or with TLS), and access to a real mosquitto named by
// the OTACTL_TEST_MOSQUITTO environment variable.
//
//	url := mqtttest.StartBroker(t)            // "mqtt://127.0.0.1:PORT"
//	u, _ := url.Parse(url + "/esp32_ABCDEF")  // a device on it
package mqtttest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/otactl/otactl/internal/mochisafe"
)

// MosquittoEnv names the environment variable that holds the address
// (host:port) of a real mosquitto broker for conformance tests.
const MosquittoEnv = "OTACTL_TEST_MOSQUITTO"

// Config configures Start. The zero value is an anonymous broker on a free
// port of 127.0.0.1.
type Config struct {
	// Addr is the listen address; empty means "127.0.0.1:0". Use a
	// Broker's Addr to start a new broker where a closed one was.
	Addr string
	// Users, when not empty, maps user names to passwords and makes the
	// broker refuse every other client (anonymous ones included).
	Users map[string]string
	// TLS, when set, makes the listener speak TLS (mqtts).
	TLS *tls.Config
	// ACL, when set, decides whether the client with clientID may
	// publish to (write) or subscribe to (!write) topic; a refused
	// subscription is granted 0x80. Nil: everything is allowed.
	ACL func(clientID, topic string, write bool) bool
	// OnPublish, when set, is called with the topic and payload of every
	// message a client publishes, before the broker delivers it, on the
	// broker's goroutine: it must not block, nor Close the broker itself
	// (start a goroutine for that). When it returns true the broker drops
	// the message (a message lost on its way). Tests use it to inject a
	// fault at a chosen message.
	OnPublish func(topic string, payload []byte) (drop bool)
}

// Broker is an in-process broker started by Start.
type Broker struct {
	// Addr is the real listen address, host:port.
	Addr string
	// URL is "mqtt://Addr" (or "mqtts://Addr" with TLS), without user
	// info or path: append "/<device_id>" for a device URL.
	URL string

	srv       *mochi.Server
	hook      *authHook
	closeOnce sync.Once
}

// Clients returns how many clients whose client id starts with prefix are
// connected now ("otactl-" for otactl's connections, "otadev-" for
// devices'; "" for all).
func (b *Broker) Clients(prefix string) int {
	n := 0
	for id, cl := range b.srv.Clients.GetAll() {
		if strings.HasPrefix(id, prefix) && !cl.Closed() {
			n++
		}
	}
	return n
}

// Connects returns how many connections from clients whose client id
// starts with prefix the broker accepted since it started.
func (b *Broker) Connects(prefix string) int {
	b.hook.mu.Lock()
	defer b.hook.mu.Unlock()
	n := 0
	for _, id := range b.hook.connected {
		if strings.HasPrefix(id, prefix) {
			n++
		}
	}
	return n
}

// Close stops the broker and drops its clients. It is idempotent; Start
// also registers it with t.Cleanup.
func (b *Broker) Close() {
	b.closeOnce.Do(func() { _ = b.srv.Close() })
}

// Start starts a mochi broker configured by c and stops it in t.Cleanup.
func Start(t testing.TB, c Config) *Broker {
	t.Helper()
	srv := mochi.New(&mochi.Options{
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		InlineClient: false,
	})
	users := make(map[string]string, len(c.Users))
	for u, p := range c.Users {
		users[u] = p
	}
	hook := &authHook{users: users, acl: c.ACL}
	if err := srv.AddHook(hook, nil); err != nil {
		t.Fatalf("mqtttest: add auth hook: %v", err)
	}
	if c.OnPublish != nil {
		if err := srv.AddHook(&publishHook{fn: c.OnPublish}, nil); err != nil {
			t.Fatalf("mqtttest: add publish hook: %v", err)
		}
	}
	addr := c.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	l := mochisafe.NewTCP(srv, listeners.Config{ID: "t1", Address: addr, TLSConfig: c.TLS})
	if err := srv.AddListener(l); err != nil {
		t.Fatalf("mqtttest: listen on %s: %v", addr, err)
	}
	if err := srv.Serve(); err != nil { // returns at once
		_ = srv.Close()
		t.Fatalf("mqtttest: serve: %v", err)
	}
	b := &Broker{Addr: l.Address(), srv: srv, hook: hook}
	scheme := "mqtt"
	if c.TLS != nil {
		scheme = "mqtts"
	}
	b.URL = scheme + "://" + b.Addr
	t.Cleanup(b.Close)
	return b
}

// StartBroker starts an anonymous, allow-all broker on 127.0.0.1 and returns
// its URL ("mqtt://127.0.0.1:PORT"). It is stopped in t.Cleanup.
func StartBroker(t testing.TB) string {
	t.Helper()
	return Start(t, Config{}).URL
}

// StartAuthBroker starts a broker that accepts only user with password and
// returns its URL without credentials.
func StartAuthBroker(t testing.TB, user, password string) string {
	t.Helper()
	return Start(t, Config{Users: map[string]string{user: password}}).URL
}

// StartTLSBroker starts a broker speaking TLS with a fresh self-signed
// certificate for 127.0.0.1 and returns its mqtts URL and a pool holding
// that certificate (for tls.Config.RootCAs).
func StartTLSBroker(t testing.TB) (string, *x509.CertPool) {
	t.Helper()
	cert, pool := SelfSigned(t)
	b := Start(t, Config{TLS: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}})
	return b.URL, pool
}

// SelfSigned makes a self-signed certificate valid for 127.0.0.1 and
// "localhost", and a pool that trusts it.
func SelfSigned(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("mqtttest: key: %v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "mqtttest"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("mqtttest: certificate: %v", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("mqtttest: parse certificate: %v", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// Mosquitto returns the URL ("mqtt://host:port") of the real mosquitto named
// by OTACTL_TEST_MOSQUITTO, or skips the test when the variable is unset.
// The broker must allow anonymous clients.
func Mosquitto(t testing.TB) string {
	t.Helper()
	addr := os.Getenv(MosquittoEnv)
	if addr == "" {
		t.Skip(MosquittoEnv + " not set: real-mosquitto conformance skipped (.ci/run sets it)")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%s=%q: want host:port: %v", MosquittoEnv, addr, err)
	}
	if _, err := strconv.Atoi(port); err != nil {
		t.Fatalf("%s=%q: bad port", MosquittoEnv, addr)
	}
	return "mqtt://" + net.JoinHostPort(host, port)
}

// authHook admits everyone when users is empty, else only the listed user
// names with their passwords; every admitted client may use every topic
// unless acl says otherwise. It also records the client id of every
// accepted connection. (mochi's own hooks/auth package would pull
// gopkg.in/yaml.v3 into the module for a few lines of logic.)
type authHook struct {
	mochi.HookBase
	users map[string]string
	acl   func(clientID, topic string, write bool) bool

	mu        sync.Mutex
	connected []string
}

// ID implements mochi.Hook.
func (h *authHook) ID() string { return "mqtttest-auth" }

// Provides implements mochi.Hook.
func (h *authHook) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck || b == mochi.OnSessionEstablished
}

// OnConnectAuthenticate implements mochi.Hook.
func (h *authHook) OnConnectAuthenticate(cl *mochi.Client, pk packets.Packet) bool {
	if len(h.users) == 0 {
		return true
	}
	want, ok := h.users[string(pk.Connect.Username)]
	return ok && pk.Connect.PasswordFlag && string(pk.Connect.Password) == want
}

// OnACLCheck implements mochi.Hook.
func (h *authHook) OnACLCheck(cl *mochi.Client, topic string, write bool) bool {
	return h.acl == nil || h.acl(cl.ID, topic, write)
}

// OnSessionEstablished implements mochi.Hook.
func (h *authHook) OnSessionEstablished(cl *mochi.Client, pk packets.Packet) {
	h.mu.Lock()
	h.connected = append(h.connected, cl.ID)
	h.mu.Unlock()
}

// publishHook calls fn for every published message (Config.OnPublish).
type publishHook struct {
	mochi.HookBase
	fn func(topic string, payload []byte) bool
}

// ID implements mochi.Hook.
func (h *publishHook) ID() string { return "mqtttest-publish" }

// Provides implements mochi.Hook.
func (h *publishHook) Provides(b byte) bool { return b == mochi.OnPublish }

// OnPublish implements mochi.Hook.
func (h *publishHook) OnPublish(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	if h.fn(pk.TopicName, pk.Payload) {
		return pk, packets.ErrRejectPacket
	}
	return pk, nil
}
