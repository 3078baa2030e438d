package mqtt

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
)

// Reconnect back-off of the device side after the broker connection broke.
const (
	minReconnectDelay = 250 * time.Millisecond
	maxReconnectDelay = 10 * time.Second
)

// Server is the device side of the MQTT transport: a broker client that
// answers requests published to RequestTopic(deviceID). See Serve.
type Server struct {
	b        *broker
	deviceID string
	clientID string
	h        transport.Handler
	opts     transport.Options
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
// user info, else from opts.Creds. When the broker connection breaks, Serve
// reconnects with back-off and subscribes again. ctx bounds only the first
// connection.
func Serve(ctx context.Context, brokerURL *url.URL, deviceID string, h transport.Handler, opts transport.Options) (*Server, error) {
	b, err := parseBroker(brokerURL, opts.Creds)
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
		clientID: randomID("otadev-"),
		h:        h,
		opts:     opts,
		maxFrame: opts.MaxFrameSize,
	}
	if s.maxFrame <= 0 {
		s.maxFrame = frame.MaxSize
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())

	// The first connection is bounded by the caller's ctx as well.
	cctx, stop := context.WithCancel(ctx)
	stopOnClose := context.AfterFunc(s.ctx, stop)
	sess, err := s.connect(cctx)
	stopOnClose()
	stop()
	if err != nil {
		s.cancel()
		s.t.wait()
		return nil, err
	}
	s.cur = sess
	s.t.enter()
	go s.supervise(sess)
	s.logf("serving RPC over MQTT", "broker", transport.Redact(brokerURL), "device", deviceID, "topic", RequestTopic(deviceID))
	return s, nil
}

// DeviceID returns the device id the server answers for.
func (s *Server) DeviceID() string { return s.deviceID }

func (s *Server) logf(msg string, args ...any) {
	if s.opts.Logger != nil {
		s.opts.Logger.Debug(msg, args...)
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

// supervise waits for the connection to break and reconnects until Close.
func (s *Server) supervise(sess *session) {
	defer s.t.leave()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-sess.lost:
		}
		s.logf("MQTT broker connection lost; reconnecting", "broker", transport.Redact(s.b.u), "error", sess.err)
		s.mu.Lock()
		if s.cur == sess {
			s.cur = nil
		}
		s.mu.Unlock()
		delay := minReconnectDelay
		for {
			timer := time.NewTimer(delay)
			select {
			case <-s.ctx.Done():
				timer.Stop()
				return
			case <-timer.C:
			}
			next, err := s.connect(s.ctx)
			if err == nil {
				sess = next
				break
			}
			s.logf("MQTT reconnect failed", "error", err, "retry_in", delay)
			delay = min(2*delay, maxReconnectDelay)
		}
		s.mu.Lock()
		if s.ctx.Err() != nil {
			s.mu.Unlock()
			disconnect(sess.cl)
			return
		}
		s.cur = sess
		s.mu.Unlock()
		s.logf("MQTT broker connection restored", "broker", transport.Redact(s.b.u))
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
		resp := s.h.HandleFrame(s.ctx, req)
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
	if err := waitToken(s.ctx, sess.cl.Publish(topic, qos, false, data), sess.lost); err != nil {
		s.logf("publishing reply failed", "topic", topic, "error", err)
	}
}

// Close disconnects from the broker, cancels the handlers' ctx and waits for
// every goroutine of the server. It is idempotent.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.t.shut()
		s.cancel()
		s.mu.Lock()
		sess := s.cur
		s.cur = nil
		s.mu.Unlock()
		if sess != nil {
			disconnect(sess.cl)
		}
		s.t.wait()
	})
	return nil
}
