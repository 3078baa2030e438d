package mqtt

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/url"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
)

// Defaults of ServeOptions.
const (
	// DefaultMinReconnect and DefaultMaxReconnect bound the wait between
	// connection attempts of the device side.
	DefaultMinReconnect = 250 * time.Millisecond
	DefaultMaxReconnect = 10 * time.Second
	// DefaultFirstAttempt bounds the first connection attempt of a
	// Background Serve.
	DefaultFirstAttempt = 5 * time.Second
)

// ServeOptions tune how the device side keeps its broker connection. Zero
// values mean defaults.
type ServeOptions struct {
	// Background makes Serve return even when the broker cannot be
	// reached, and keep connecting in the background with back-off, as a
	// device does at boot: a broker that is down must not keep a device
	// off its other transports. The first attempt is still made before
	// Serve returns (bounded by ctx and FirstAttempt), so a reachable
	// broker has the request topic subscribed on return. Without
	// Background, a failed first attempt is Serve's error.
	Background bool
	// FirstAttempt bounds the first connection attempt of a Background
	// Serve. Default DefaultFirstAttempt.
	FirstAttempt time.Duration
	// MinReconnect is the wait before the first attempt after a failure
	// or a lost connection; each further failure doubles it, up to
	// MaxReconnect; a successful connection starts again from
	// MinReconnect. Defaults DefaultMinReconnect and DefaultMaxReconnect.
	MinReconnect, MaxReconnect time.Duration
	// Jitter spreads each wait at random by up to ± this fraction of it
	// (a Mongoose OS device uses 0.1). Default 0.
	Jitter float64
	// AfterFunc schedules f after d and returns a function that cancels
	// it; every back-off wait goes through it, so that a device emulator
	// can run them on its own clock. Default time.AfterFunc.
	AfterFunc func(d time.Duration, f func()) (stop func() bool)
}

func (o ServeOptions) withDefaults() ServeOptions {
	if o.FirstAttempt <= 0 {
		o.FirstAttempt = DefaultFirstAttempt
	}
	if o.MinReconnect <= 0 {
		o.MinReconnect = DefaultMinReconnect
	}
	if o.MaxReconnect <= 0 {
		o.MaxReconnect = DefaultMaxReconnect
	}
	o.MaxReconnect = max(o.MaxReconnect, o.MinReconnect)
	o.Jitter = min(max(o.Jitter, 0), 1)
	if o.AfterFunc == nil {
		o.AfterFunc = func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }
	}
	return o
}

// DeviceClientIDPrefix starts the client id of every device side (Serve):
// with 16 random hex digits after it, 23 bytes, the longest every MQTT
// 3.1.1 broker must accept.
const DeviceClientIDPrefix = "otadev-"

// Server is the device side of the MQTT transport: a broker client that
// answers requests published to RequestTopic(deviceID). See Serve.
type Server struct {
	b        *broker
	deviceID string
	clientID string
	h        transport.Handler
	opts     transport.Options
	so       ServeOptions
	maxFrame int

	ctx    context.Context // handler ctx; cancelled by Close
	cancel context.CancelFunc
	t      tracker // handlers, message callbacks, the reconnect loop

	mu  sync.Mutex
	cur *session // current broker connection; nil while reconnecting

	closeOnce sync.Once
}

// session is one broker connection (a fresh paho client each time).
type session struct {
	cl       paho.Client
	lost     chan struct{}
	lostOnce sync.Once
	err      error // why it was lost; set before lost is closed

	gate pubGate // replies published on cl
}

// close stops publishing and disconnects from the broker.
func (sess *session) close() {
	sess.gate.close(sess.lost)
	disconnect(sess.cl)
}

// Serve connects to the broker named by brokerURL (mqtt://[user:pass@]broker[:port]
// or mqtts://; a path is ignored) as device deviceID and serves h until
// Close. It returns once the request topic is subscribed.
//
// For each request frame published to RequestTopic(deviceID): frames larger
// than opts.MaxFrameSize (default frame.MaxSize, a real device's limit) and
// frames whose non-empty dst is not deviceID are dropped; h.HandleFrame runs
// in its own goroutine, so a request that blocks (OTA.Update) does not hold
// up others; a non-nil reply is published at QoS 1 to "<reply dst>/rpc", its
// dst defaulting to the request's src (and its src to deviceID).
//
// The client id is random per Serve. Broker credentials come from the URL
// user info. When the broker connection breaks, Serve
// reconnects with back-off and subscribes again. ctx bounds only the first
// connection. Serve is ServeWith with the default ServeOptions: it returns
// an error when the first connection fails.
func Serve(ctx context.Context, brokerURL *url.URL, deviceID string, h transport.Handler, opts transport.Options) (*Server, error) {
	return ServeWith(ctx, brokerURL, deviceID, h, opts, ServeOptions{})
}

// ServeWith is Serve with so tuning the connection: with so.Background it
// returns without a broker connection when the broker cannot be reached,
// and keeps connecting with back-off.
func ServeWith(ctx context.Context, brokerURL *url.URL, deviceID string, h transport.Handler, opts transport.Options, so ServeOptions) (*Server, error) {
	b, err := parseBroker(brokerURL)
	if err != nil {
		return nil, err
	}
	if deviceID == "" {
		return nil, fmt.Errorf("%w: no device id to serve on MQTT broker %s", transport.ErrBadPort, transport.Redact(brokerURL))
	}
	if err := checkTopicPart("device id", deviceID); err != nil {
		return nil, err
	}
	if h == nil {
		return nil, fmt.Errorf("mqtt.Serve: nil handler")
	}
	s := &Server{
		b:        b,
		deviceID: deviceID,
		clientID: randomID(DeviceClientIDPrefix),
		h:        h,
		opts:     opts,
		so:       so.withDefaults(),
		maxFrame: opts.MaxFrameSize,
	}
	if s.maxFrame <= 0 {
		s.maxFrame = frame.MaxSize
	}
	s.ctx, s.cancel = context.WithCancel(transport.WithChannel(context.Background(), &transport.Channel{Type: transport.ChannelMQTT}))

	// The first connection is bounded by the caller's ctx as well (and,
	// in the background mode, by FirstAttempt).
	cctx, stop := context.WithCancel(ctx)
	if s.so.Background {
		cctx, stop = context.WithTimeout(ctx, s.so.FirstAttempt)
	}
	stopOnClose := context.AfterFunc(s.ctx, stop)
	sess, err := s.connect(cctx)
	stopOnClose()
	stop()
	if err != nil && (!s.so.Background || ctx.Err() != nil) {
		s.cancel()
		s.t.wait()
		return nil, err
	}
	if err != nil {
		s.warnf("MQTT broker unreachable; connecting in the background", "broker", transport.Redact(brokerURL), "error", err)
	} else {
		s.cur = sess
	}
	s.t.enter()
	go s.supervise(sess)
	s.logf("serving RPC over MQTT", "broker", transport.Redact(brokerURL), "device", deviceID, "topic", RequestTopic(deviceID))
	return s, nil
}

// Connected reports whether the server is connected to its broker and
// subscribed to the request topic.
func (s *Server) Connected() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur != nil
}

// DeviceID returns the device id the server answers for.
func (s *Server) DeviceID() string { return s.deviceID }

func (s *Server) logf(msg string, args ...any) {
	if s.opts.Logger != nil {
		s.opts.Logger.Debug(msg, args...)
	}
}

// infof and warnf report the state of the broker connection (a device's
// log shows them).
func (s *Server) infof(msg string, args ...any) {
	if s.opts.Logger != nil {
		s.opts.Logger.Info(msg, args...)
	}
}

func (s *Server) warnf(msg string, args ...any) {
	if s.opts.Logger != nil {
		s.opts.Logger.Warn(msg, args...)
	}
}

// connect opens a fresh broker connection and subscribes to the request topic.
func (s *Server) connect(ctx context.Context) (*session, error) {
	sess := &session{lost: make(chan struct{})}
	d := newDialer(ctx, s.b, s.opts.TLS)
	po := clientOptions(s.b, s.clientID, d)
	po.SetConnectionLostHandler(func(_ paho.Client, err error) {
		sess.lostOnce.Do(func() {
			sess.err = err
			close(sess.lost)
		})
	})
	sess.cl = paho.NewClient(po)
	if err := connect(ctx, sess.cl, d, s.b); err != nil {
		return nil, err
	}
	topic := RequestTopic(s.deviceID)
	if err := subscribe(ctx, sess.cl, topic, s.onRequest, sess.lost); err != nil {
		disconnect(sess.cl)
		return nil, fmt.Errorf("MQTT broker %s: %w", transport.Redact(s.b.u), err)
	}
	return sess, nil
}

// supervise waits for the connection to break and reconnects until Close;
// sess is nil when the first connection failed. Each wait goes through
// so.AfterFunc: MinReconnect after a loss or the first failure, doubling
// with each failure up to MaxReconnect, spread by Jitter.
func (s *Server) supervise(sess *session) {
	defer s.t.leave()
	var delay time.Duration // 0: the next wait is the first of a series
	for {
		if sess != nil {
			select {
			case <-s.ctx.Done():
				return
			case <-sess.lost:
			}
			s.warnf("MQTT broker connection lost; reconnecting", "broker", transport.Redact(s.b.u), "error", sess.err)
			s.mu.Lock()
			if s.cur == sess {
				s.cur = nil
			}
			s.mu.Unlock()
			sess, delay = nil, 0
		}
		if delay == 0 {
			delay = s.so.MinReconnect
		} else {
			delay = min(2*delay, s.so.MaxReconnect)
		}
		wait := s.jitter(delay)
		s.infof(fmt.Sprintf("MQTT connecting after %v", wait.Round(time.Millisecond)), "broker", transport.Redact(s.b.u))
		if !s.wait(wait) {
			return
		}
		next, err := s.connect(s.ctx)
		if err != nil {
			if s.ctx.Err() != nil {
				return
			}
			s.warnf("MQTT connect failed", "broker", transport.Redact(s.b.u), "error", err)
			continue
		}
		s.mu.Lock()
		if s.ctx.Err() != nil {
			s.mu.Unlock()
			disconnect(next.cl)
			return
		}
		s.cur = next
		s.mu.Unlock()
		sess = next
		s.infof("MQTT broker connected; request topic subscribed", "broker", transport.Redact(s.b.u), "topic", RequestTopic(s.deviceID))
	}
}

// jitter spreads d by up to ± so.Jitter of it.
func (s *Server) jitter(d time.Duration) time.Duration {
	if s.so.Jitter == 0 {
		return d
	}
	f := 1 + s.so.Jitter*(2*rand.Float64()-1)
	return time.Duration(float64(d) * f)
}

// wait waits d through so.AfterFunc; false when the server closed first.
func (s *Server) wait(d time.Duration) bool {
	done := make(chan struct{})
	stop := s.so.AfterFunc(d, func() { close(done) })
	select {
	case <-done:
		return true
	case <-s.ctx.Done():
		stop()
		return false
	}
}

// maxAddressing bounds the bytes that src and dst may add to a request
// beyond the frame size limit; see addressingSize.
const maxAddressing = 1024

// addressingSize is what the MQTT client's routing adds to a frame: the
// "src" and "dst" members (with their separators). The frame size limit
// applies to the rest, so that a frame that fits a device on a serial link
// fits it over MQTT too, although the MQTT src
// ("<device_id>/rpc-resp/<client_id>") is long.
func addressingSize(f *frame.Frame) int {
	n := 0
	for _, v := range []string{f.Src, f.Dst} {
		if v != "" {
			b, _ := json.Marshal(v)
			n += len(`,"src":`) + len(frame.ASCII(b))
		}
	}
	return n
}

// onRequest runs in a paho goroutine per message; it must not block.
func (s *Server) onRequest(_ paho.Client, m paho.Message) {
	defer m.Ack()
	if !s.t.enter() {
		return
	}
	data := m.Payload()
	s.opts.DebugFrame("recv", data)
	if len(data) > s.maxFrame+maxAddressing {
		s.logf("dropping oversized request", "bytes", len(data), "limit", s.maxFrame)
		s.t.leave()
		return
	}
	req, err := frame.Parse(data)
	if err != nil {
		s.logf("dropping MQTT message that is not an RPC frame", "error", err)
		s.t.leave()
		return
	}
	if n := len(data) - addressingSize(req); n > s.maxFrame {
		s.logf("dropping oversized request", "bytes", n, "limit", s.maxFrame)
		s.t.leave()
		return
	}
	if req.Dst != "" && req.Dst != s.deviceID {
		s.logf("dropping request for another device", "dst", req.Dst)
		s.t.leave()
		return
	}
	go func() {
		defer s.t.leave()
		// The reply counts as sent once the broker acknowledged it (QoS
		// 1) or publishing failed: see transport.AfterReply.
		ctx, replied := transport.WithReplyNotice(s.ctx)
		defer replied()
		resp := s.h.HandleFrame(ctx, req)
		if resp == nil {
			return
		}
		s.reply(req, resp)
	}()
}

// reply publishes resp to "<resp.Dst>/rpc".
func (s *Server) reply(req, resp *frame.Frame) {
	cp := *resp
	if cp.Dst == "" {
		cp.Dst = req.Src
	}
	if cp.Src == "" {
		cp.Src = s.deviceID
	}
	if cp.Dst == "" {
		s.logf("dropping reply: the request had no src to answer to", "id", req.ID)
		return
	}
	data, err := frame.Marshal(&cp)
	if err != nil {
		s.logf("cannot encode reply", "id", req.ID, "error", err)
		return
	}
	s.mu.Lock()
	sess := s.cur
	s.mu.Unlock()
	if sess == nil || s.ctx.Err() != nil {
		s.logf("dropping reply: not connected to the broker", "id", req.ID)
		return
	}
	s.opts.DebugFrame("send", data)
	topic := cp.Dst + "/rpc"
	toks, ok := sess.gate.publish(sess.cl, topic, data, sess.lost)
	if !ok {
		s.logf("dropping reply: disconnecting from the broker", "id", req.ID)
		return
	}
	var tok paho.Token
	select {
	case tok = <-toks:
	case <-sess.lost:
		s.logf("publishing reply failed", "topic", topic, "error", sess.err)
		return
	}
	if err := waitToken(s.ctx, tok, sess.lost); err != nil {
		s.logf("publishing reply failed", "topic", topic, "error", err)
	}
}

// Close disconnects from the broker, cancels the handlers' ctx and waits for
// every goroutine of the server (but not, after a lost connection, for paho
// calls the loss stranded: pubGate). It is idempotent.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.t.shut()
		s.cancel()
		s.mu.Lock()
		sess := s.cur
		s.cur = nil
		s.mu.Unlock()
		if sess != nil {
			sess.close()
		}
		s.t.wait()
	})
	return nil
}
