package mqtt

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"sync"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
)

// recvQueue is how many received frames wait for Recv before the broker is
// made to wait (the ack is held back).
const recvQueue = 64

// recentSent is how many request ids a connection remembers, to route a
// reply when several connections to one device share a session.
const recentSent = 64

// DeviceID returns the device id named by the path of an mqtt:// URL
// ("mqtt://broker/esp32_ABCDEF" → "esp32_ABCDEF"), without surrounding
// slashes.
func DeviceID(u *url.URL) string {
	if u == nil {
		return ""
	}
	return strings.Trim(u.Path, "/")
}

// Dial connects to the broker named by u (mqtt://[user:pass@]broker[:1883]/<device_id>
// or mqtts://…:8883) and returns a connection to the device <device_id>
// over a broker connection of its own, which Close ends. To reach many
// devices over one broker connection, dial through a Sessions.
//
// The client id is opts.ClientID, or "otactl-" and 16 random hex digits,
// new for every connection (two clients with one id knock each other off the
// broker). The broker's credentials come from the URL user info only
// (opts.Creds are the device's RPC credentials, never sent to a broker).
// For mqtts, opts.TLS is used when set (certificates are verified unless the
// caller's config says otherwise). Dial returns once the reply topic
// ReplyTopic(deviceID, clientID) is subscribed, so no reply can be missed.
// ctx bounds the whole dial.
func Dial(ctx context.Context, u *url.URL, opts transport.Options) (transport.Conn, error) {
	d, err := parseDial(u, opts)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("connect to MQTT broker %s: %w", transport.Redact(u), err)
	}
	s := newSession(nil, d, opts)
	if err := s.connect(ctx); err != nil {
		s.connected(err, ctx.Err() != nil)
		return nil, err
	}
	s.connected(nil, false)
	c, err := s.attach(ctx, u, d.deviceID, opts)
	if err != nil {
		s.shutdown()
		return nil, err
	}
	return c, nil
}

// dialTarget is a checked device URL.
type dialTarget struct {
	b        *broker // its URL is the dialled one without the device path
	deviceID string
	clientID string // the ClientID option; empty: random per session
}

// parseDial checks a device URL and the client id option.
func parseDial(u *url.URL, opts transport.Options) (dialTarget, error) {
	b, err := parseBroker(u)
	if err != nil {
		return dialTarget{}, err
	}
	deviceID := DeviceID(u)
	if deviceID == "" {
		return dialTarget{}, fmt.Errorf("%w: %s: no device id: use %s://[user:pass@]broker[:port]/<device_id>, e.g. %s://%s/esp32_ABCDEF",
			transport.ErrBadPort, transport.Redact(u), u.Scheme, u.Scheme, u.Host)
	}
	if err := checkTopicPart("device id", deviceID); err != nil {
		return dialTarget{}, err
	}
	if opts.ClientID != "" {
		if err := checkTopicPart("MQTT client id", opts.ClientID); err != nil {
			return dialTarget{}, err
		}
	}
	// The session is the broker's, not the device's: its messages name
	// the broker without the device path.
	bu := *u
	bu.Path, bu.RawPath, bu.RawQuery, bu.Fragment = "", "", "", ""
	b.u = &bu
	return dialTarget{b: b, deviceID: deviceID, clientID: opts.ClientID}, nil
}

// conn is a client connection to one device over a session; see Dial and
// Sessions.Dial.
type conn struct {
	s        *brokerSession
	r        *route // the device's reply topic on s
	u        *url.URL
	opts     transport.Options
	deviceID string
	reqTopic string
	src      string

	in   chan incoming
	done chan struct{} // closed by Close

	closeOnce sync.Once

	sentMu sync.Mutex
	sent   [recentSent]int64 // ids of the last requests sent, for routing
	next   int
}

// DeviceID returns the device id the connection talks to (the rpc client
// names it when two devices answer).
func (c *conn) DeviceID() string { return c.deviceID }

// ClientID returns the MQTT client id of the connection (its session's).
func (c *conn) ClientID() string { return c.s.clientID }

func (c *conn) logf(msg string, args ...any) {
	if c.opts.Logger != nil {
		c.opts.Logger.Debug(msg, args...)
	}
}

// remember records the id of a request sent on c.
func (c *conn) remember(id int64) {
	if id == 0 {
		return
	}
	c.sentMu.Lock()
	c.sent[c.next] = id
	c.next = (c.next + 1) % recentSent
	c.sentMu.Unlock()
}

// sentID reports whether c sent one of its last requests with id.
func (c *conn) sentID(id int64) bool {
	c.sentMu.Lock()
	defer c.sentMu.Unlock()
	for _, s := range c.sent {
		if s == id {
			return true
		}
	}
	return false
}

// deliver hands a message on the device's reply topic to Recv. It blocks
// while Recv lags recvQueue frames behind (the broker then waits for the
// ack), until c is closed.
func (c *conn) deliver(topic string, data []byte) {
	c.opts.DebugFrame("recv", data)
	// Only the device answers on this client's own reply topic: anything
	// there that is not a frame is its answer, unreadable.
	what := fmt.Sprintf("an MQTT message on %s", topic)
	var in incoming
	if max := c.opts.MaxFrame(); len(data) > max {
		e := transport.NewNotRPCError(what, fmt.Sprintf("larger than %d bytes, the most otactl reads of a reply", max), data, transport.Redact(c.u))
		in.err = e
	} else if f, reason := transport.ParseReply(data); f != nil {
		in.f = f
	} else {
		e := transport.NewNotRPCError(what, reason, data, transport.Redact(c.u))
		e.Hint = "check that the device at this id runs Mongoose OS RPC over MQTT"
		in.err = e
	}
	select {
	case c.in <- in:
	case <-c.done:
	}
}

// incoming is what deliver hands to Recv: a frame, or the error for a
// message that is not one.
type incoming struct {
	f   *frame.Frame
	err error
}

// Send publishes a copy of f, with dst set to the device id and src to
// ReplySrc(deviceID, clientID), to RequestTopic(deviceID) at QoS 1, and
// waits for the broker's PUBACK or ctx.
func (c *conn) Send(ctx context.Context, f *frame.Frame) error {
	s := c.s
	select {
	case <-c.done:
		return transport.ErrClosed
	case <-s.done:
		return transport.ErrClosed
	default:
	}
	if err := s.lostErr(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	cp := *f
	cp.Dst = c.deviceID
	cp.Src = c.src
	data, err := frame.Marshal(&cp)
	if err != nil {
		return fmt.Errorf("encode RPC frame: %w", err)
	}
	c.opts.DebugFrame("send", data)
	c.remember(f.ID)

	// Publish itself may block (up to the write timeout) when the link is
	// stalled; it runs aside so that ctx and Close are honoured meanwhile.
	toks, ok := s.gate.publish(s.cl, c.reqTopic, data, s.lost)
	if !ok {
		if e := s.lostErr(); e != nil {
			return e
		}
		return transport.ErrClosed
	}
	var tok paho.Token
	select {
	case tok = <-toks:
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		return transport.ErrClosed
	case <-s.done:
		return transport.ErrClosed
	case <-s.lost:
		return s.lostErr()
	}
	// The message is queued on the connection in order: a caller keeping
	// several requests in flight may send the next one (transport.WithSent).
	transport.Sent(ctx)
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			if e := s.lostErr(); e != nil {
				return e
			}
			select {
			case <-c.done:
				return transport.ErrClosed
			case <-s.done:
				return transport.ErrClosed
			default:
			}
			return fmt.Errorf("publish to MQTT topic %q on %s: %w", c.reqTopic, transport.Redact(s.b.u), err)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		return transport.ErrClosed
	case <-s.done:
		return transport.ErrClosed
	case <-s.lost:
		return s.lostErr()
	}
}

// Recv returns the next frame published to the device's reply topic.
func (c *conn) Recv(ctx context.Context) (*frame.Frame, error) {
	s := c.s
	select {
	case <-c.done:
		return nil, transport.ErrClosed
	default:
	}
	select {
	case in := <-c.in:
		return in.f, in.err
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-c.done:
		return nil, transport.ErrClosed
	case <-s.done:
		return nil, transport.ErrClosed
	case <-s.lost:
		// Hand out what arrived before the link broke.
		select {
		case in := <-c.in:
			return in.f, in.err
		default:
		}
		return nil, s.lostErr()
	}
}

// Close ends the connection to the device: its Send and Recv return
// ErrClosed. The session's other connections go on; a connection of its
// own (Dial) is disconnected from the broker, and Close waits for its
// goroutines. It is idempotent.
func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		close(c.done)
		c.s.detach(c)
		c.s.release()
	})
	return nil
}
