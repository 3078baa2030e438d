package mqtt

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/otactl/otactl/pkg/transport"
)

// How a session subscribes to its devices' reply topics
// (docs/transports.md, "One broker connection for many devices"): the
// topics of devices dialled at about the same time go out together, at
// most maxTopicsPerSubscribe in one SUBSCRIBE (AWS IoT Core refuses more
// than 8, as a hard limit), with up to maxSubscribesInFlight SUBSCRIBEs
// awaiting their SUBACK at once. Nothing waits on a timer: a topic waits
// only while the SUBSCRIBEs before it are in flight.
const (
	maxTopicsPerSubscribe = 8
	maxSubscribesInFlight = 16
)

// session is one MQTT client connection to a broker (one paho client, one
// client id), shared by the connections to any number of devices. Each
// device's reply topic is subscribed once, on first use, and stays
// subscribed while the session lives; replies are routed by topic to the
// device's connections (by request id when a device has more than one).
//
// A session made by Dial serves one connection and ends with it; a
// session of a Sessions pool ends when its last connection closed and
// its linger time passed, when its broker connection is lost, or with the
// pool.
type brokerSession struct {
	owner    *Sessions // nil: Dial's session of its own
	key      sessionKey
	b        *broker // URL without the device path
	clientID string
	tls      *tls.Config
	logger   *slog.Logger

	cl   paho.Client
	gate pubGate // Publish and Subscribe calls on cl
	t    tracker // message callbacks, SUBSCRIBE and publishing goroutines

	// abort ends a connect under way when the session is shut down.
	abortCtx context.Context
	abort    context.CancelFunc

	ready   chan struct{} // closed when the connect attempt ended
	connErr error         // its error; written before ready is closed
	ctxErr  bool          // connErr came from the opener's ctx

	done     chan struct{} // closed by shutdown
	shutOnce sync.Once

	lost     chan struct{} // closed when the broker connection broke
	lostOnce sync.Once
	lostMu   sync.Mutex
	lostE    error

	mu      sync.Mutex
	routes  map[string]*route // by reply topic
	pending []*route          // waiting for a SUBSCRIBE
	subs    int               // SUBSCRIBEs awaiting their SUBACK
	// subscribes counts the SUBSCRIBEs sent.
	subscribes int

	// Guarded by owner.mu.
	refs       int         // open connections and dials under way
	closing    bool        // shut down or about to be
	failed     bool        // the connect failed
	retired    bool        // takes no new dials: a SUBSCRIBE on it went unanswered
	open       bool        // counted as an open broker connection
	lingerGen  int         // invalidates a linger timer that fired late
	stopLinger func() bool // stops the linger timer; nil: none
}

// route is one device's reply topic on a session.
type route struct {
	topic string
	sent  bool          // its SUBSCRIBE went to paho (session.mu)
	ready chan struct{} // closed once the SUBSCRIBE was answered
	err   error         // why the subscription failed; written before ready closes
	conns []*conn       // the device's connections; replaced, never changed in place (session.mu)
}

func newSession(owner *Sessions, d dialTarget, opts transport.Options) *brokerSession {
	clientID := d.clientID
	if clientID == "" {
		clientID = randomID("otactl-")
	}
	s := &brokerSession{
		owner:    owner,
		key:      keyOf(d, opts),
		b:        d.b,
		clientID: clientID,
		tls:      opts.TLS,
		logger:   opts.Logger,
		ready:    make(chan struct{}),
		done:     make(chan struct{}),
		lost:     make(chan struct{}),
		routes:   map[string]*route{},
	}
	s.abortCtx, s.abort = context.WithCancel(context.Background())
	return s
}

func (s *brokerSession) debug(msg string, args ...any) {
	if s.logger != nil {
		s.logger.Debug(msg, args...)
	}
}

// connect connects to the broker, bounded by ctx (and by shutdown). The
// caller then reports the result with connected.
func (s *brokerSession) connect(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.abortCtx, cancel)
	defer stop()
	d := newDialer(ctx, s.b, s.tls)
	po := clientOptions(s.b, s.clientID, d)
	po.SetConnectionLostHandler(func(_ paho.Client, err error) { s.connectionLost(err) })
	// Messages reach onMessage through paho's default handler: the
	// session routes them itself, by a map lookup, rather than through
	// one paho route per device tried in turn.
	po.SetDefaultPublishHandler(s.onMessage)
	s.cl = paho.NewClient(po)
	if err := connect(ctx, s.cl, d, s.b); err != nil {
		return err
	}
	s.debug("connected to MQTT broker", "broker", transport.Redact(s.b.u), "client_id", s.clientID)
	return nil
}

// connected records the result of connect and lets the dials waiting for
// it go on.
func (s *brokerSession) connected(err error, ctxErr bool) {
	s.connErr, s.ctxErr = err, ctxErr
	close(s.ready)
}

func (s *brokerSession) connectionLost(err error) {
	s.lostOnce.Do(func() {
		s.lostMu.Lock()
		s.lostE = fmt.Errorf("connection to MQTT broker %s lost: %v: check the broker and retry", transport.Redact(s.b.u), err)
		s.lostMu.Unlock()
		close(s.lost)
		s.debug("MQTT broker connection lost", "broker", transport.Redact(s.b.u), "client_id", s.clientID, "err", err)
		if s.owner != nil {
			s.owner.forget(s)
		}
	})
}

func (s *brokerSession) lostErr() error {
	s.lostMu.Lock()
	defer s.lostMu.Unlock()
	return s.lostE
}

func (s *brokerSession) isLost() bool {
	select {
	case <-s.lost:
		return true
	default:
		return false
	}
}

// attach opens a connection to deviceID on the connected session: it
// subscribes to the device's reply topic, or waits for the SUBSCRIBE under
// way, or finds the topic subscribed already.
func (s *brokerSession) attach(ctx context.Context, u *url.URL, deviceID string, opts transport.Options) (*conn, error) {
	c := &conn{
		s:        s,
		u:        u,
		opts:     opts,
		deviceID: deviceID,
		reqTopic: RequestTopic(deviceID),
		src:      ReplySrc(deviceID, s.clientID),
		in:       make(chan incoming, recvQueue),
		done:     make(chan struct{}),
	}
	topic := ReplyTopic(deviceID, s.clientID)
	s.mu.Lock()
	r := s.routes[topic]
	if r == nil {
		r = &route{topic: topic, ready: make(chan struct{})}
		s.routes[topic] = r
		s.pending = append(s.pending, r)
		s.kick()
	}
	r.conns = append(r.conns[:len(r.conns):len(r.conns)], c)
	c.r = r
	s.mu.Unlock()

	var err error
	select {
	case <-r.ready:
		err = r.err
	case <-ctx.Done():
		err = fmt.Errorf("subscribe to MQTT topic %q: %w", topic, ctx.Err())
		s.unanswered(r)
	case <-s.lost:
		err = s.lostErr()
	case <-s.done:
		err = fmt.Errorf("subscribe to MQTT topic %q: %w", topic, transport.ErrClosed)
	}
	if err != nil {
		s.detach(c)
		if e := s.lostErr(); e != nil {
			return nil, e
		}
		return nil, fmt.Errorf("MQTT broker %s: %w", transport.Redact(u), err)
	}
	c.logf("device reachable over MQTT", "broker", transport.Redact(s.b.u), "client_id", s.clientID, "device", deviceID, "reply_topic", topic)
	return c, nil
}

// unanswered is called when a dial gave up waiting for r's SUBACK. If
// r's SUBSCRIBE was sent and is still unanswered, the broker connection
// is not to be trusted (docs/transports.md, "One broker connection for
// many devices"): it may carry a CONNACK and pings and yet have lost the
// SUBSCRIBE (a broker that went away without a FIN or RST reaching us, a
// middlebox that dropped the flow), and paho reports no loss while the
// TCP connection stands. The
// session then takes no new dials: the next one connects afresh instead
// of waiting on the same SUBSCRIBE until its own deadline, and this one
// ends once its last connection closed. Connections open on it carry on.
func (s *brokerSession) unanswered(r *route) {
	s.mu.Lock()
	stuck := r.sent
	select {
	case <-r.ready:
		stuck = false
	default:
	}
	s.mu.Unlock()
	if !stuck || s.owner == nil {
		return
	}
	s.debug("SUBSCRIBE unanswered: the MQTT broker connection takes no new dials", "broker", transport.Redact(s.b.u),
		"client_id", s.clientID, "topic", r.topic)
	s.owner.retire(s)
}

// detach removes c from its device's route. The route stays subscribed.
func (s *brokerSession) detach(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := c.r
	if r == nil {
		return
	}
	conns := make([]*conn, 0, len(r.conns))
	for _, o := range r.conns {
		if o != c {
			conns = append(conns, o)
		}
	}
	r.conns = conns
}

// kick sends SUBSCRIBEs for pending topics while fewer than
// maxSubscribesInFlight await their SUBACK. s.mu is held.
func (s *brokerSession) kick() {
	for len(s.pending) > 0 && s.subs < maxSubscribesInFlight {
		n := min(len(s.pending), maxTopicsPerSubscribe)
		batch := s.pending[:n:n]
		s.pending = s.pending[n:]
		if !s.t.enter() {
			// Shut down: the dials waiting see s.done.
			continue
		}
		s.subs++
		s.subscribes++
		for _, r := range batch {
			r.sent = true
		}
		go s.subscribe(batch)
	}
	if len(s.pending) == 0 {
		s.pending = nil // let the array go
	}
}

// subscribe sends one SUBSCRIBE for batch and settles its routes. The
// topics the broker answered "packet identifier in use" go out again in a
// new SUBSCRIBE (a new identifier), up to maxSubscribeTries times.
func (s *brokerSession) subscribe(batch []*route) {
	defer s.t.leave()
	todo := batch
	for try := 1; len(todo) > 0; try++ {
		tok, err := s.subscribeOnce(todo)
		var again []*route
		s.mu.Lock()
		for _, r := range todo {
			var retry bool
			var rerr error
			if err != nil {
				rerr = fmt.Errorf("subscribe to MQTT topic %q: %w", r.topic, err)
			} else {
				code, ok := subackCode(tok, r.topic)
				retry, rerr = subackVerdict(r.topic, code, ok)
			}
			if retry && try < maxSubscribeTries {
				again = append(again, r)
				continue
			}
			r.err = rerr
			if r.err != nil && s.routes[r.topic] == r {
				// A later dial tries again.
				delete(s.routes, r.topic)
			}
			close(r.ready)
		}
		if len(again) > 0 {
			s.subscribes++
		}
		s.mu.Unlock()
		todo = again
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.subs--
	s.kick()
}

// subscribeOnce sends one SUBSCRIBE for routes and waits for its SUBACK
// (or the end of the session or of its broker connection).
func (s *brokerSession) subscribeOnce(routes []*route) (paho.Token, error) {
	filters := make(map[string]byte, len(routes))
	for _, r := range routes {
		filters[r.topic] = qos
	}
	toks, ok := s.gate.subscribe(s.cl, filters, s.lost)
	if !ok {
		if e := s.lostErr(); e != nil {
			return nil, e
		}
		return nil, transport.ErrClosed
	}
	var tok paho.Token
	select {
	case tok = <-toks:
	case <-s.done:
		return nil, transport.ErrClosed
	case <-s.lost:
		return nil, s.lostErr()
	}
	select {
	case <-tok.Done():
	case <-s.done:
		return nil, transport.ErrClosed
	case <-s.lost:
		return nil, s.lostErr()
	}
	return tok, tok.Error()
}

// onMessage runs in its own paho goroutine per message (order does not
// matter). It hands the message to the connections of the device whose
// reply topic it came on and then acks it, so that a reader that falls
// behind slows the broker down rather than losing replies.
func (s *brokerSession) onMessage(_ paho.Client, m paho.Message) {
	if !s.t.enter() {
		m.Ack()
		return
	}
	defer s.t.leave()
	defer m.Ack()
	topic := m.Topic()
	s.mu.Lock()
	var conns []*conn
	if r := s.routes[topic]; r != nil {
		conns = r.conns
	}
	s.mu.Unlock()
	if len(conns) == 0 {
		// A late reply for a device no connection talks to any more, or
		// a topic this client never asked for.
		s.debug("MQTT message for no open connection dropped", "topic", topic)
		return
	}
	data := m.Payload()
	if len(conns) > 1 {
		conns = pick(conns, data)
	}
	for _, c := range conns {
		c.deliver(topic, data)
	}
}

// pick returns the connections among conns (to one device) that sent the
// request data answers, or all of them when none did or data names no id
// (then every connection sees it, and each RPC client ignores a reply to
// a request it did not make).
func pick(conns []*conn, data []byte) []*conn {
	f, _ := transport.ParseReply(data)
	if f == nil || f.ID == 0 {
		return conns
	}
	var out []*conn
	for _, c := range conns {
		if c.sentID(f.ID) {
			out = append(out, c)
		}
	}
	if len(out) == 0 {
		return conns
	}
	return out
}

// release drops one reference to the session: a closed connection or a
// dial that failed.
func (s *brokerSession) release() {
	if s.owner != nil {
		s.owner.release(s)
		return
	}
	s.shutdown()
}

// shutdown ends the session: a connect under way is aborted, dials
// waiting fail, connections' Send and Recv return ErrClosed, the client
// disconnects, and shutdown waits for the session's goroutines (but not,
// after a lost connection, for paho calls the loss stranded: pubGate). It
// is idempotent.
func (s *brokerSession) shutdown() {
	s.shutOnce.Do(func() {
		s.abort()
		<-s.ready
		s.t.shut()
		close(s.done)
		s.gate.close(s.lost)
		if s.connErr == nil {
			disconnect(s.cl)
		}
		s.t.wait()
	})
}

// counts returns how many reply topics the session subscribed, and in how
// many SUBSCRIBEs.
func (s *brokerSession) counts() (devices, subscribes int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, r := range s.routes {
		select {
		case <-r.ready:
			if r.err == nil {
				n++
			}
		default:
		}
	}
	return n, s.subscribes
}

// sessionKey says which dials share a session: the same broker (scheme,
// host and port), broker credentials, client id option and TLS
// configuration (the same *tls.Config: equal configs that are distinct
// values do not share).
type sessionKey struct {
	tls      bool
	addr     string
	user     string
	pass     string
	hasPwd   bool
	clientID string
	tlsConf  *tls.Config
}

func keyOf(d dialTarget, opts transport.Options) sessionKey {
	k := sessionKey{
		tls:      d.b.tls,
		addr:     strings.ToLower(d.b.addr),
		user:     d.b.user,
		pass:     d.b.pass,
		hasPwd:   d.b.hasPwd,
		clientID: d.clientID,
	}
	if d.b.tls {
		k.tlsConf = opts.TLS
	}
	return k
}
