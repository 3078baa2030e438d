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
// or mqtts://…:8883) and returns a connection to the device <device_id>.
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
	b, err := parseBroker(u)
	if err != nil {
		return nil, err
	}
	deviceID := DeviceID(u)
	if deviceID == "" {
		return nil, fmt.Errorf("%w: %s: no device id: use %s://[user:pass@]broker[:port]/<device_id>, e.g. %s://%s/esp32_ABCDEF",
			transport.ErrBadPort, transport.Redact(u), u.Scheme, u.Scheme, u.Host)
	}
	if err := checkTopicPart("device id", deviceID); err != nil {
		return nil, err
	}
	clientID := opts.ClientID
	if clientID == "" {
		clientID = randomID("otactl-")
	} else if err := checkTopicPart("MQTT client id", clientID); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("connect to MQTT broker %s: %w", transport.Redact(u), err)
	}

	c := &conn{
		b:        b,
		opts:     opts,
		deviceID: deviceID,
		clientID: clientID,
		reqTopic: RequestTopic(deviceID),
		src:      ReplySrc(deviceID, clientID),
		in:       make(chan incoming, recvQueue),
		done:     make(chan struct{}),
		lost:     make(chan struct{}),
	}
	d := newDialer(ctx, b, opts.TLS)
	po := clientOptions(b, clientID, d)
	po.SetConnectionLostHandler(func(_ paho.Client, err error) { c.connectionLost(err) })
	c.cl = paho.NewClient(po)

	if err := connect(ctx, c.cl, d, b); err != nil {
		return nil, err
	}
	// Subscribe before anything is published: the device answers at once.
	if err := subscribe(ctx, c.cl, ReplyTopic(deviceID, clientID), c.onMessage, c.lost); err != nil {
		c.Close()
		if e := c.lostErr(); e != nil {
			return nil, e
		}
		return nil, fmt.Errorf("MQTT broker %s: %w", transport.Redact(u), err)
	}
	c.logf("connected to MQTT broker", "broker", transport.Redact(u), "client_id", clientID, "device", deviceID)
	return c, nil
}

// conn is a client connection; see Dial.
type conn struct {
	b        *broker
	opts     transport.Options
	cl       paho.Client
	deviceID string
	clientID string
	reqTopic string
	src      string

	in   chan incoming
	done chan struct{} // closed by Close
	t    tracker       // message callbacks and publishing goroutines
	gate pubGate       // requests published on cl

	closeOnce sync.Once

	lost     chan struct{} // closed when the broker connection broke
	lostOnce sync.Once
	lostMu   sync.Mutex
	lostE    error
}

// DeviceID returns the device id the connection talks to (the rpc client
// names it when two devices answer).
func (c *conn) DeviceID() string { return c.deviceID }

// ClientID returns the MQTT client id of the connection.
func (c *conn) ClientID() string { return c.clientID }

func (c *conn) logf(msg string, args ...any) {
	if c.opts.Logger != nil {
		c.opts.Logger.Debug(msg, args...)
	}
}

func (c *conn) connectionLost(err error) {
	c.lostOnce.Do(func() {
		c.lostMu.Lock()
		c.lostE = fmt.Errorf("connection to MQTT broker %s lost: %v: check the broker and retry", transport.Redact(c.b.u), err)
		c.lostMu.Unlock()
		close(c.lost)
	})
}

func (c *conn) lostErr() error {
	c.lostMu.Lock()
	defer c.lostMu.Unlock()
	return c.lostE
}

// onMessage runs in its own paho goroutine per message (order does not
// matter); it hands the frame to Recv and then acks it, so a reader that
// falls behind slows the broker down rather than losing replies.
func (c *conn) onMessage(_ paho.Client, m paho.Message) {
	if !c.t.enter() {
		m.Ack()
		return
	}
	defer c.t.leave()
	defer m.Ack()
	data := m.Payload()
	c.opts.DebugFrame("recv", data)
	// Only the device answers on this client's own reply topic: anything
	// there that is not a frame is its answer, unreadable.
	what := fmt.Sprintf("an MQTT message on %s", m.Topic())
	var in incoming
	if max := c.opts.MaxFrame(); len(data) > max {
		e := transport.NewNotRPCError(what, fmt.Sprintf("larger than %d bytes, the most otactl reads of a reply", max), data, transport.Redact(c.b.u))
		in.err = e
	} else if f, reason := transport.ParseReply(data); f != nil {
		in.f = f
	} else {
		e := transport.NewNotRPCError(what, reason, data, transport.Redact(c.b.u))
		e.Hint = "check that the device at this id runs Mongoose OS RPC over MQTT"
		in.err = e
	}
	select {
	case c.in <- in:
	case <-c.done:
	}
}

// incoming is what onMessage hands to Recv: a frame, or the error for a
// message that is not one.
type incoming struct {
	f   *frame.Frame
	err error
}

// Send publishes a copy of f, with dst set to the device id and src to
// ReplySrc(deviceID, clientID), to RequestTopic(deviceID) at QoS 1, and
// waits for the broker's PUBACK or ctx.
func (c *conn) Send(ctx context.Context, f *frame.Frame) error {
	select {
	case <-c.done:
		return transport.ErrClosed
	default:
	}
	if err := c.lostErr(); err != nil {
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

	// Publish itself may block (up to the write timeout) when the link is
	// stalled; run it aside so that ctx and Close are honoured meanwhile.
	if !c.t.enter() {
		return transport.ErrClosed
	}
	toks := make(chan paho.Token, 1)
	go func() {
		defer c.t.leave()
		if tok, ok := c.gate.publish(c.cl, c.reqTopic, data, c.lost); ok {
			toks <- tok
		}
	}()
	var tok paho.Token
	select {
	case tok = <-toks:
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		return transport.ErrClosed
	case <-c.lost:
		return c.lostErr()
	}
	// The message is queued on the connection in order: a caller keeping
	// several requests in flight may send the next one (transport.WithSent).
	transport.Sent(ctx)
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			if e := c.lostErr(); e != nil {
				return e
			}
			select {
			case <-c.done:
				return transport.ErrClosed
			default:
			}
			return fmt.Errorf("publish to MQTT topic %q on %s: %w", c.reqTopic, transport.Redact(c.b.u), err)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		return transport.ErrClosed
	case <-c.lost:
		return c.lostErr()
	}
}

// Recv returns the next frame published to the reply topic.
func (c *conn) Recv(ctx context.Context) (*frame.Frame, error) {
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
	case <-c.lost:
		// Hand out what arrived before the link broke.
		select {
		case in := <-c.in:
			return in.f, in.err
		default:
		}
		return nil, c.lostErr()
	}
}

// Close disconnects from the broker and waits for the connection's
// goroutines. It is idempotent and unblocks Send and Recv.
func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		c.t.shut()
		close(c.done)
		c.gate.close()
		disconnect(c.cl)
		c.t.wait()
	})
	return nil
}
