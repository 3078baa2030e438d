// Package mqtt is the MQTT transport of the Mongoose OS RPC protocol
// (docs/protocol.md, "MQTT"), both ends:
//
//   - Dial is the client used by otactl for
//     mqtt://[user:pass@]broker[:1883]/<device_id> and mqtts://… (port 8883).
//     Requests are published to "<device_id>/rpc"; the device answers on
//     "<device_id>/rpc-resp/<client_id>/rpc", which Dial subscribes to before
//     it returns. Dial opens a broker connection per device; Sessions.Dial
//     serves any number of devices over one broker connection per broker
//     (docs/transports.md, "One broker connection for many devices").
//   - Serve is the device side used by the emulator: it subscribes to
//     "<device_id>/rpc" and publishes each reply to "<reply dst>/rpc".
//
// Both use github.com/eclipse/paho.mqtt.golang with MQTT 3.1.1, a clean
// session, keepalive 30 s and QoS 1.
package mqtt

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/otactl/otactl/pkg/transport"
)

// Default broker ports.
const (
	DefaultPort    = 1883 // mqtt://
	DefaultTLSPort = 8883 // mqtts://
)

// Protocol settings shared by both ends.
const (
	qos            = 1
	keepAlive      = 30 * time.Second
	writeTimeout   = 10 * time.Second // bounds one packet write and a Publish call
	connectTimeout = 30 * time.Second // backstop; ctx normally ends a connect sooner
	quiesce        = 500              // ms granted to send DISCONNECT on Close
)

// RequestTopic is the topic a device listens on for requests:
// "<deviceID>/rpc".
func RequestTopic(deviceID string) string { return deviceID + "/rpc" }

// ReplySrc is the src a client puts on its requests:
// "<deviceID>/rpc-resp/<clientID>". The device publishes its reply to
// ReplySrc + "/rpc".
func ReplySrc(deviceID, clientID string) string { return deviceID + "/rpc-resp/" + clientID }

// ReplyTopic is the topic a client subscribes to for replies:
// "<deviceID>/rpc-resp/<clientID>/rpc".
func ReplyTopic(deviceID, clientID string) string { return ReplySrc(deviceID, clientID) + "/rpc" }

// broker is a parsed mqtt:// or mqtts:// URL.
type broker struct {
	u      *url.URL // as given, for messages (always shown via transport.Redact)
	tls    bool
	host   string // host name or IP, without port
	addr   string // host:port
	user   string
	pass   string
	hasPwd bool
}

// parseBroker checks the scheme, host and port of u and fills in the default
// port. The broker's credentials come from the URL user info only: the RPC
// credentials (transport.Options.Creds, --rpc-creds) are the device's, for
// in-frame digest authentication, and are never sent to a broker (where
// CONNECT would carry the password itself, in the clear over mqtt://).
func parseBroker(u *url.URL) (*broker, error) {
	if u == nil {
		return nil, fmt.Errorf("%w: no MQTT URL given", transport.ErrBadPort)
	}
	b := &broker{u: u}
	switch strings.ToLower(u.Scheme) {
	case "mqtt":
	case "mqtts":
		b.tls = true
	default:
		return nil, fmt.Errorf("%w: %s: scheme must be mqtt:// or mqtts://", transport.ErrBadPort, transport.Redact(u))
	}
	b.host = u.Hostname()
	if b.host == "" {
		return nil, fmt.Errorf("%w: %s: no broker host: use %s://[user:pass@]broker[:port]/<device_id>",
			transport.ErrBadPort, transport.Redact(u), u.Scheme)
	}
	port := DefaultPort
	if b.tls {
		port = DefaultTLSPort
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("%w: %s: bad broker port %q: use a number from 1 to 65535", transport.ErrBadPort, transport.Redact(u), p)
		}
		port = n
	} else if strings.HasSuffix(u.Host, ":") {
		return nil, fmt.Errorf("%w: %s: empty broker port: drop the colon or give a port number", transport.ErrBadPort, transport.Redact(u))
	}
	b.addr = net.JoinHostPort(b.host, strconv.Itoa(port))
	if u.User != nil {
		b.user = u.User.Username()
		b.pass, b.hasPwd = u.User.Password()
	}
	return b, nil
}

// checkTopicPart rejects ids that cannot be part of a topic: MQTT wildcards
// and the NUL character.
func checkTopicPart(what, s string) error {
	if strings.ContainsAny(s, "+#\x00") {
		return fmt.Errorf("%w: %s %q must not contain '+', '#' or NUL (they are MQTT wildcards)", transport.ErrBadPort, what, s)
	}
	return nil
}

// randomID returns prefix followed by 16 random hex digits; with a 7-byte
// prefix that is 23 bytes, the longest client id every MQTT 3.1.1 broker
// must accept.
func randomID(prefix string) string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand panics on failure)
	return prefix + hex.EncodeToString(b[:])
}

// clientOptions returns paho options common to both ends: MQTT 3.1.1 (no
// fallback to 3.1), clean session, keepalive 30 s, no automatic reconnect
// (the owner decides), unordered delivery (a slow handler must not stall
// the connection), manual acks (so that the ack happens inside our tracked
// callback), and a connection opener that honours the dialer's ctx.
func clientOptions(b *broker, clientID string, d *ctxDialer) *paho.ClientOptions {
	o := paho.NewClientOptions()
	// The scheme here is only a label: d.open makes the connection.
	o.AddBroker("tcp://" + b.addr)
	o.SetClientID(clientID)
	o.SetProtocolVersion(4)
	o.SetCleanSession(true)
	o.SetKeepAlive(keepAlive)
	o.SetAutoReconnect(false)
	o.SetConnectRetry(false)
	o.SetResumeSubs(false)
	o.SetOrderMatters(false)
	o.SetAutoAckDisabled(true)
	o.SetWriteTimeout(writeTimeout)
	o.SetConnectTimeout(connectTimeout)
	o.SetConnectionLostHandler(nil)
	if b.user != "" || b.hasPwd {
		o.SetUsername(b.user)
		o.SetPassword(b.pass)
	}
	o.SetCustomOpenConnectionFn(d.open)
	return o
}

// ctxDialer opens the network connection for paho so that a cancelled ctx
// aborts the TCP dial, the TLS handshake and the MQTT CONNECT exchange.
type ctxDialer struct {
	ctx context.Context
	b   *broker
	tls *tls.Config // for mqtts; nil means system roots
	// certs records whether the broker asked for a client certificate
	// that was not sent.
	certs transport.CertWatch

	mu   sync.Mutex
	stop func() bool // stops closing the open connection when ctx ends
}

func newDialer(ctx context.Context, b *broker, tlsConf *tls.Config) *ctxDialer {
	return &ctxDialer{ctx: ctx, b: b, tls: tlsConf}
}

func (d *ctxDialer) open(_ *url.URL, _ paho.ClientOptions) (net.Conn, error) {
	var nd net.Dialer
	c, err := nd.DialContext(d.ctx, "tcp", d.b.addr)
	if err != nil {
		return nil, err
	}
	c = quickAck(c)
	if d.b.tls {
		conf := d.certs.Watch(d.tls)
		if conf.ServerName == "" {
			conf.ServerName = d.b.host
		}
		tc := tls.Client(c, conf)
		if err := tc.HandshakeContext(d.ctx); err != nil {
			c.Close()
			if d.ctx.Err() == nil && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
				// A broker without TLS on this port reads the TLS hello as
				// a broken MQTT packet and hangs up; so does a network
				// that drops the connection, so this stays a link error.
				return nil, fmt.Errorf("TLS handshake: the broker closed the connection (%w): if it serves no TLS on this port, use mqtt:// (default port 1883)", err)
			}
			return nil, fmt.Errorf("TLS handshake: %w", err)
		}
		c = tc
	}
	// Until the connect finished, ending ctx closes the connection, which
	// ends paho's CONNECT/CONNACK exchange at once.
	stop := context.AfterFunc(d.ctx, func() { c.Close() })
	d.mu.Lock()
	d.stop = stop
	d.mu.Unlock()
	return newBufferedConn(c), nil
}

// readBufferSize is the read buffer of each connection to the broker: an
// RPC request or reply, with its topic, fits in one.
const readBufferSize = 2048

// bufferedConn buffers what paho reads: paho reads a packet's first byte,
// then its length one byte at a time, then its body, each a read from the
// connection (a system call on TCP); buffered, a packet usually costs one
// read, and packets that arrive together one between them. Bodies larger
// than the buffer are read straight into paho's buffer.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func newBufferedConn(c net.Conn) *bufferedConn {
	return &bufferedConn{Conn: c, r: bufio.NewReaderSize(c, readBufferSize)}
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// release detaches the connection from ctx. It reports false when ctx ended
// first (the connection is then closed or being closed).
func (d *ctxDialer) release() bool {
	d.mu.Lock()
	stop := d.stop
	d.stop = nil
	d.mu.Unlock()
	if stop == nil {
		return d.ctx.Err() == nil
	}
	return stop()
}

// connect connects cl, bounded by ctx, and explains a failure. On error the
// client is left disconnected.
func connect(ctx context.Context, cl paho.Client, d *ctxDialer, b *broker) error {
	tok := cl.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		// d.open's AfterFunc closes the connection, so the token completes
		// promptly; wait for it so that no connect goroutine outlives us.
		<-tok.Done()
	}
	if err := tok.Error(); err != nil {
		// The connection is closed; do not keep it tied to a ctx that may
		// live on (the device side reconnects under one ctx).
		d.release()
		if ctx.Err() != nil {
			return fmt.Errorf("connect to MQTT broker %s: %w", transport.Redact(b.u), ctx.Err())
		}
		return explainConnectError(b, err, &d.certs)
	}
	if !d.release() {
		disconnect(cl)
		return fmt.Errorf("connect to MQTT broker %s: %w", transport.Redact(b.u), ctx.Err())
	}
	return nil
}

func explainConnectError(b *broker, err error, cw *transport.CertWatch) error {
	where := transport.Redact(b.u)
	if te := transport.ExplainTLS(err, "MQTT broker", where, "mqtt://", cw); te != nil {
		return te
	}
	switch {
	// Brokers answer bad credentials with either code (mosquitto and mochi
	// use "not authorised").
	case errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword), errors.Is(err, packets.ErrorRefusedNotAuthorised):
		if b.user == "" && !b.hasPwd {
			return fmt.Errorf("MQTT broker %s refused an anonymous client: it wants a user name and password: put them in the URL (%s://user:pass@%s/…; --rpc-creds are the device's, not the broker's): %w: %w",
				where, b.u.Scheme, b.u.Host, transport.ErrAuth, err)
		}
		return fmt.Errorf("MQTT broker %s refused user %q: wrong user name or password (or the user may not connect): check the credentials: %w: %w", where, b.user, transport.ErrAuth, err)
	case errors.Is(err, packets.ErrorRefusedIDRejected):
		return fmt.Errorf("MQTT broker %s rejected the client id: pick another client id: %w", where, err)
	case errors.Is(err, packets.ErrorRefusedServerUnavailable):
		return fmt.Errorf("MQTT broker %s is unavailable: try again later: %w", where, err)
	case errors.Is(err, packets.ErrorRefusedBadProtocolVersion):
		return fmt.Errorf("MQTT broker %s does not speak MQTT 3.1.1: %w", where, err)
	}
	return fmt.Errorf("cannot connect to MQTT broker %s (%s): check the address and that the broker is running: %w", where, b.addr, err)
}

// pubGate keeps paho's Publish (and SubscribeMultiple) calls on one
// client from holding up its Close. Such a call blocks until paho's writer
// takes the packet (an unbuffered channel); once the connection broke,
// nothing takes it and the call blocks for the whole write timeout (10 s,
// paho v1.5.1: the connected check comes first, so the calls caught are
// those that were queued behind the writer when the link went, as many as
// a client had requests in flight).
//
// Each call runs on a goroutine of its own that the gate counts (start).
// Whoever waits for its token also watches lost, so nobody waits for a
// call that the lost connection stranded; close lets no more calls
// through and waits for those under way (they return at once while the
// connection is up), unless the connection is lost meanwhile: a stranded
// call then ends by itself within the write timeout, its token unread.
type pubGate struct {
	mu     sync.Mutex
	closed bool
	calls  int           // under way
	idle   chan struct{} // closed when calls is back to 0 after close began
}

// publish starts cl.Publish at QoS 1 (see start).
func (g *pubGate) publish(cl paho.Client, topic string, data []byte, lost <-chan struct{}) (toks <-chan paho.Token, ok bool) {
	return g.start(lost, func() paho.Token { return cl.Publish(topic, qos, false, data) })
}

// subscribe starts cl.SubscribeMultiple for filters, with no callback of
// its own (the client's default handler gets the messages); see start.
func (g *pubGate) subscribe(cl paho.Client, filters map[string]byte, lost <-chan struct{}) (toks <-chan paho.Token, ok bool) {
	return g.start(lost, func() paho.Token { return cl.SubscribeMultiple(filters, nil) })
}

// start runs call on a goroutine of its own, unless the gate is closed or
// lost is (ok is false then); its token arrives on toks (buffered: nobody
// has to read it). Wait for it together with lost.
func (g *pubGate) start(lost <-chan struct{}, call func() paho.Token) (toks <-chan paho.Token, ok bool) {
	select {
	case <-lost:
		return nil, false
	default:
	}
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil, false
	}
	g.calls++
	g.mu.Unlock()
	ch := make(chan paho.Token, 1)
	go func() {
		defer g.leave()
		ch <- call()
	}()
	return ch, true
}

func (g *pubGate) leave() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.calls--
	if g.calls == 0 && g.idle != nil {
		close(g.idle)
		g.idle = nil
	}
}

// close lets no more calls through and waits for those under way, or
// until lost is closed.
func (g *pubGate) close(lost <-chan struct{}) {
	g.mu.Lock()
	g.closed = true
	if g.calls == 0 {
		g.mu.Unlock()
		return
	}
	if g.idle == nil {
		g.idle = make(chan struct{})
	}
	idle := g.idle
	g.mu.Unlock()
	select {
	case <-idle:
	case <-lost:
	}
}

// underWay returns how many calls are under way (tests).
func (g *pubGate) underWay() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.calls
}

// disconnect ends cl and waits until paho's workers have stopped.
//
// Disconnect returns after the quiesce time even when its work is still
// running; a second Disconnect waits for a disconnect in progress to finish
// (or returns at once when there is nothing to do), so that Close does not
// leave paho goroutines behind.
func disconnect(cl paho.Client) {
	cl.Disconnect(quiesce)
	cl.Disconnect(5 * quiesce)
}

// waitToken waits for tok, ctx, or done (closed on Close).
func waitToken(ctx context.Context, tok paho.Token, done <-chan struct{}) error {
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-done:
		return transport.ErrClosed
	}
}

// subscribe subscribes cl to topic at QoS 1 and checks that the broker
// granted it (subackVerdict), sending the SUBSCRIBE again when the broker
// answered that its packet identifier was in use.
func subscribe(ctx context.Context, cl paho.Client, topic string, cb paho.MessageHandler, done <-chan struct{}) error {
	for try := 1; ; try++ {
		tok := cl.Subscribe(topic, qos, cb)
		if err := waitToken(ctx, tok, done); err != nil {
			return fmt.Errorf("subscribe to MQTT topic %q: %w", topic, err)
		}
		code, ok := subackCode(tok, topic)
		again, err := subackVerdict(topic, code, ok)
		if !again || try == maxSubscribeTries {
			return err
		}
	}
}

// maxSubscribeTries bounds how often one topic's SUBSCRIBE is sent while
// the broker answers that its packet identifier is in use.
const maxSubscribeTries = 4

// Return codes of a SUBACK (MQTT 3.1.1, 3.9.3): 0x00 to 0x02 grant the
// subscription at that QoS, 0x80 refuses it. codeIDInUse is MQTT 5's
// "packet identifier in use", which some brokers also answer to a 3.1.1
// client (docs/transports.md, "One broker connection for many devices").
const (
	codeMaxGranted = 0x02
	codeRefused    = 0x80
	codeIDInUse    = 0x91
)

// subackCode returns the return code the broker's SUBACK gave topic; ok
// is false when the SUBACK named none for it.
func subackCode(tok paho.Token, topic string) (code byte, ok bool) {
	st, isSub := tok.(*paho.SubscribeToken)
	if !isSub {
		return 0, false
	}
	code, ok = st.Result()[topic]
	return code, ok
}

// subackVerdict says what the return code a SUBACK gave topic means: err
// is nil when the broker granted the subscription, else it says why not; again is true
// when the SUBSCRIBE is worth sending again (with a new packet
// identifier). Only 0x00 to 0x02 grant a subscription: a broker that
// answers anything else has subscribed nothing, and a connection that
// took such an answer for a grant would wait for replies that never
// come.
func subackVerdict(topic string, code byte, ok bool) (again bool, err error) {
	switch {
	case !ok:
		return false, fmt.Errorf("the MQTT broker's SUBACK gave no return code for %q: check the broker", topic)
	case code <= codeMaxGranted:
		return false, nil
	case code == codeRefused:
		return false, fmt.Errorf("the MQTT broker refused the subscription to %q: check its access rules for this user", topic)
	case code == codeIDInUse:
		return true, fmt.Errorf("the MQTT broker did not subscribe %q: it answered that the SUBSCRIBE's packet identifier was in use (0x91), %d times; retry", topic, maxSubscribeTries)
	default:
		return false, fmt.Errorf("the MQTT broker did not subscribe %q: its SUBACK answered 0x%02x, which grants nothing; check the broker", topic, code)
	}
}

// tracker counts callbacks and goroutines so that Close can wait for them,
// and refuses new ones once closed.
type tracker struct {
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// enter registers one unit of work; it reports false after shut.
func (t *tracker) enter() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.wg.Add(1)
	return true
}

func (t *tracker) leave() { t.wg.Done() }

// shut refuses new work; it reports false if already shut.
func (t *tracker) shut() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.closed = true
	return true
}

func (t *tracker) wait() { t.wg.Wait() }
