// Package rpc is the transport-agnostic Mongoose OS RPC layer: a Client that
// correlates replies by id, and a Server (method registry) that the device
// emulator serves on any transport.
package rpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
)

// DefaultSrc is the "src" this client puts in its requests.
const DefaultSrc = "otactl"

// ClientOptions configure a Client. Zero values mean defaults.
type ClientOptions struct {
	// Src is the request "src" (default DefaultSrc). Transports that need a
	// particular src (MQTT) set it themselves.
	Src string
	// Dst is the request "dst"; empty means whoever is on the other end.
	Dst string
	// Creds answer the device's in-frame digest challenge (code 401).
	// Once a challenge was answered successfully, later calls answer it
	// up front (its nonce stays valid for an hour on a device), so that
	// each call costs one round trip, not two; a stale nonce gets a fresh
	// challenge, which is answered.
	Creds *transport.Credentials
	// Where names the device (its address, secrets redacted) in
	// authentication errors.
	Where string
	// Logger gets debug lines about unmatched replies. Nil: none.
	Logger *slog.Logger
	// DeviceID names the device in messages about duplicate replies. Empty:
	// the transport's (a transport.Addressed Conn, as MQTT's), else the src
	// of the replies.
	DeviceID string
}

// Client makes RPC calls over one transport.Conn. It is safe for concurrent
// use; replies are matched to calls by id only.
//
// Besides matching, the client watches for two things a device should never
// do (docs/transports.md, "Replies otactl cannot read" and "More than one
// device"):
//
//   - An answer that is not an RPC frame (the transport's Recv returns a
//     *transport.NotRPCError): the call it was meant for fails with a
//     *BadReplyError, or, when the transport cannot tell which call that
//     was, every call in flight does.
//   - A second reply to a request that was already answered, or replies
//     from two different senders (src): more than one device answers at
//     this address (two devices with one id on an MQTT broker). That is
//     sticky: every pending and later call fails with a *DuplicateReplyError
//     (errors.Is(err, ErrDuplicateReply)). Settle waits a little for such late
//     replies before a caller changes the device's state.
type Client struct {
	conn transport.Conn
	opts ClientOptions

	mu        sync.Mutex
	pending   map[int64]*call
	readErr   error
	dup       error // sticky *DuplicateReplyError
	dupSet    chan struct{}
	answered  recentReplies
	src       string        // src of the first reply that carried one
	lastReply time.Time     // when the last reply matched a call
	slowest   time.Duration // longest time a call waited for its reply
	done      chan struct{} // closed when the reader stops
	// challenge is the last in-frame digest challenge that Creds answered
	// successfully; nil before.
	challenge *challenge
}

// call is one request waiting for its reply.
type call struct {
	method string
	sent   time.Time
	ch     chan reply // buffered, one reply per registration
}

// reply is what the reader hands to a waiting call.
type reply struct {
	f   *frame.Frame
	err error
}

// NewClient starts a client over conn. The client owns conn: Close closes it.
func NewClient(conn transport.Conn, opts ClientOptions) *Client {
	if opts.Src == "" {
		opts.Src = DefaultSrc
	}
	c := &Client{
		conn:    conn,
		opts:    opts,
		pending: map[int64]*call{},
		dupSet:  make(chan struct{}),
		done:    make(chan struct{}),
	}
	if opts.DeviceID == "" {
		if d, ok := conn.(transport.Addressed); ok {
			c.opts.DeviceID = d.DeviceID()
		}
	}
	go c.readLoop()
	return c
}

// NewID returns a random request id in [2^40, 2^41), as mos does.
func NewID() int64 {
	return 1<<40 + rand.Int64N(1<<40)
}

func (c *Client) debug(msg string, args ...any) {
	if c.opts.Logger != nil {
		c.opts.Logger.Debug(msg, args...)
	}
}

func (c *Client) readLoop() {
	defer close(c.done)
	for {
		f, err := c.conn.Recv(context.Background())
		if err != nil {
			var nr *transport.NotRPCError
			if errors.As(err, &nr) {
				c.notRPC(nr)
				continue // the link itself still works
			}
			c.mu.Lock()
			c.readErr = err
			c.mu.Unlock()
			return
		}
		if f.IsRequest() {
			continue // the device calling us: not supported, ignore
		}
		c.deliver(f)
	}
}

// deliver hands a reply to its call, or notices that it answers a request
// that was already answered.
func (c *Client) deliver(f *frame.Frame) {
	now := time.Now()
	c.mu.Lock()
	cl, ok := c.pending[f.ID]
	if !ok {
		prev, seen := c.answered.get(f.ID)
		c.mu.Unlock()
		if seen {
			c.duplicate(&DuplicateReplyError{ID: f.ID, Method: prev.method, DeviceID: c.deviceID(f.Src),
				Srcs: srcPair(prev.src, f.Src)})
			return
		}
		c.debug("reply matches no pending call", "id", f.ID)
		return
	}
	if f.Src != "" && c.src != "" && f.Src != c.src {
		first := c.src
		c.mu.Unlock()
		c.duplicate(&DuplicateReplyError{ID: f.ID, Method: cl.method, DeviceID: c.deviceID(f.Src), Srcs: []string{first, f.Src}})
		return
	}
	if c.src == "" {
		c.src = f.Src
	}
	delete(c.pending, f.ID)
	c.answered.add(f.ID, answer{method: cl.method, src: f.Src})
	c.lastReply = now
	if d := now.Sub(cl.sent); d > c.slowest {
		c.slowest = d
	}
	c.mu.Unlock()
	cl.ch <- reply{f: f}
}

// notRPC fails the call a non-frame answer was meant for, or every call in
// flight when the transport cannot tell which one it was.
func (c *Client) notRPC(nr *transport.NotRPCError) {
	c.mu.Lock()
	var failed []*call
	if nr.ID != 0 {
		if cl, ok := c.pending[nr.ID]; ok {
			delete(c.pending, nr.ID)
			failed = append(failed, cl)
		}
	} else {
		for id, cl := range c.pending {
			delete(c.pending, id)
			failed = append(failed, cl)
		}
	}
	c.mu.Unlock()
	if len(failed) == 0 {
		if c.opts.Logger != nil {
			c.opts.Logger.Warn("ignoring an answer that is not an RPC frame and answers no call in flight", "err", nr)
		}
		return
	}
	for _, cl := range failed {
		cl.ch <- reply{err: &BadReplyError{Method: cl.method, Err: nr}}
	}
}

// duplicate makes err sticky and fails every call in flight with it.
func (c *Client) duplicate(err *DuplicateReplyError) {
	c.mu.Lock()
	if c.dup != nil {
		c.mu.Unlock()
		return
	}
	c.dup = err
	close(c.dupSet)
	failed := make([]*call, 0, len(c.pending))
	for id, cl := range c.pending {
		delete(c.pending, id)
		failed = append(failed, cl)
	}
	c.mu.Unlock()
	if c.opts.Logger != nil {
		c.opts.Logger.Warn("more than one device answers", "err", err)
	}
	for _, cl := range failed {
		cl.ch <- reply{err: err}
	}
}

func (c *Client) deviceID(src string) string {
	if c.opts.DeviceID != "" {
		return c.opts.DeviceID
	}
	return src
}

func srcPair(a, b string) []string {
	if a != "" && b != "" && a != b {
		return []string{a, b}
	}
	return nil
}

// Err returns the sticky error of the client: a *DuplicateReplyError once
// more than one device answered, else nil.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dup == nil {
		return nil
	}
	return c.dup
}

// SlowestReply returns the longest time a call of this client waited for
// its reply so far (0 before the first reply).
func (c *Client) SlowestReply() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.slowest
}

// Settle times (docs/transports.md, "More than one device"). On loopback
// mosquitto a second device's reply lags the first by under 1 ms
// (BenchmarkSecondReplyLag in pkg/transport/mqtt); devices on a real
// network differ by more, so the wait follows the slowest round trip seen.
const (
	SettleMin = 250 * time.Millisecond
	SettleMax = 3 * time.Second
)

// SettleTime is how long Settle should wait on this client: twice the
// slowest round trip it saw, at least SettleMin and at most SettleMax.
func (c *Client) SettleTime() time.Duration {
	return min(max(2*c.SlowestReply(), SettleMin), SettleMax)
}

// Shared reports whether the client reaches its device through a medium
// where more than one device can answer to one address: its connection
// implements transport.Addressed (MQTT, where devices are reached by id
// through a broker).
func (c *Client) Shared() bool {
	_, ok := c.conn.(transport.Addressed)
	return ok
}

// Settle waits until d has passed since the last reply this client
// received, so that a second device answering the same requests late is
// noticed, and returns the client's sticky error (ErrDuplicateReply) if one
// did. It returns at once with that error if it is already known, and with
// ctx's error if ctx ends first. Callers that are about to change the
// device's state over a shared medium (an MQTT broker) settle first;
// docs/transports.md says how long.
func (c *Client) Settle(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	last := c.lastReply
	c.mu.Unlock()
	if last.IsZero() {
		last = time.Now()
	}
	wait := time.Until(last.Add(d))
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-c.dupSet:
		case <-ctx.Done():
			if err := c.Err(); err != nil {
				return err
			}
			return fmt.Errorf("waiting %v for a second device to answer: %w", d, ctx.Err())
		}
	}
	return c.Err()
}

// Close closes the connection and waits for the reader to stop.
func (c *Client) Close() error {
	err := c.conn.Close()
	<-c.done
	if errors.Is(err, transport.ErrClosed) {
		err = nil
	}
	return err
}

// Call invokes method with params (nil for none; any value that marshals to
// a JSON object, or a json.RawMessage) and returns the raw result ("null"
// when the device sent none). A reply whose error code is non-zero becomes
// an *Error; code 0 is success.
func (c *Client) Call(ctx context.Context, method string, params any) (json.RawMessage, error) {
	req, err := c.request(method, params)
	if err != nil {
		return nil, err
	}
	resp, authed, err := c.authRoundTrip(ctx, req)
	if err != nil {
		return nil, err
	}
	return c.result(resp, method, authed)
}

// request builds the request frame of a call, with a new id.
func (c *Client) request(method string, params any) (*frame.Frame, error) {
	req := &frame.Frame{ID: NewID(), Src: c.opts.Src, Dst: c.opts.Dst, Method: method}
	if params != nil {
		raw, ok := params.(json.RawMessage)
		if !ok {
			b, err := json.Marshal(params)
			if err != nil {
				return nil, fmt.Errorf("%s: encoding arguments: %w", method, err)
			}
			raw = b
		} else if len(raw) > 0 && !json.Valid(raw) {
			return nil, fmt.Errorf("%s: arguments are not valid JSON: %.100s", method, raw)
		}
		if len(raw) > 0 && string(raw) != "null" {
			req.Params = raw
		}
	}
	return req, nil
}

// result turns the final reply of a call into its result: an error object
// with a non-zero code becomes an *Error (403 an *AuthError).
func (c *Client) result(resp *frame.Frame, method string, authed bool) (json.RawMessage, error) {
	if resp.Error != nil && resp.Error.Code == 403 {
		return nil, &AuthError{Kind: transport.AuthForbidden, User: c.presentedUser(authed), Method: method, Where: c.opts.Where,
			Err: &Error{Method: method, Code: resp.Error.Code, Message: resp.Error.Message}}
	}
	if resp.Error != nil && resp.Error.Code != 0 {
		return nil, &Error{Method: method, Code: resp.Error.Code, Message: resp.Error.Message}
	}
	if len(resp.Result) == 0 {
		return json.RawMessage("null"), nil
	}
	return resp.Result, nil
}

// authRoundTrip sends req and deals with the device's in-frame digest
// authentication (docs/security.md): it answers a known challenge up
// front, answers a 401 challenge once, and turns a refusal into an
// *AuthError. authed reports whether the reply answers a request that
// carried credentials.
func (c *Client) authRoundTrip(ctx context.Context, req *frame.Frame) (resp *frame.Frame, authed bool, err error) {
	known := c.presetAuth(req)
	if resp, err = c.roundTrip(ctx, req); err != nil {
		return nil, false, err
	}
	return c.authReply(ctx, req, known, resp)
}

// presetAuth answers the known challenge in req up front, and returns it.
func (c *Client) presetAuth(req *frame.Frame) *challenge {
	c.mu.Lock()
	known := c.challenge
	c.mu.Unlock()
	if known != nil && c.opts.Creds != nil {
		req.Auth = known.answer(c.opts.Creds)
	}
	return known
}

// authReply deals with the device's answer resp to req, sent with the
// known challenge answered (presetAuth): see authRoundTrip.
func (c *Client) authReply(ctx context.Context, req *frame.Frame, known *challenge, resp *frame.Frame) (_ *frame.Frame, authed bool, err error) {
	if req.Auth != nil && isBadRequest(resp) {
		// The device's realm or algorithm changed since: ask afresh.
		c.setChallenge(known, nil)
		req.Auth = nil
		if resp, err = c.roundTrip(ctx, req); err != nil {
			return nil, false, err
		}
	}
	if resp.Error == nil || resp.Error.Code != 401 {
		return resp, req.Auth != nil, nil
	}
	method := req.Method
	ch, perr := parseChallenge(resp.Error.Message)
	if perr != nil {
		return nil, false, &Error{Method: method, Code: 401, Message: resp.Error.Message}
	}
	if c.opts.Creds == nil {
		return nil, false, &AuthError{Kind: transport.AuthRequired, Method: method, Where: c.opts.Where, How: "in-frame digest", Realm: ch.Realm}
	}
	if req.Auth != nil {
		// The known nonce went stale (a device takes one for an hour).
		c.setChallenge(known, nil)
	}
	req.Auth = ch.answer(c.opts.Creds)
	if resp, err = c.roundTrip(ctx, req); err != nil {
		return nil, false, err
	}
	user := c.opts.Creds.User
	switch {
	case resp.Error != nil && resp.Error.Code == 401:
		return nil, false, &AuthError{Kind: transport.AuthRefused, User: user, Method: method, Where: c.opts.Where, How: "in-frame digest", Realm: ch.Realm}
	case isBadRequest(resp):
		return nil, false, &AuthError{Kind: transport.AuthMalformed, User: user, Method: method, Where: c.opts.Where, How: "in-frame digest", Realm: ch.Realm,
			Err: &Error{Method: method, Code: resp.Error.Code, Message: resp.Error.Message}}
	}
	c.setChallenge(nil, ch)
	return resp, true, nil
}

// setChallenge replaces the known challenge old (nil: whatever it is)
// with ch, unless another call replaced old meanwhile.
func (c *Client) setChallenge(old, ch *challenge) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old == nil || c.challenge == old {
		c.challenge = ch
	}
}

// isBadRequest reports whether resp is a device's 400 "bad request", its
// answer to an "auth" object it cannot use.
func isBadRequest(resp *frame.Frame) bool {
	return resp.Error != nil && resp.Error.Code == 400 && resp.Error.Message == "bad request"
}

// presentedUser is the user the device was shown for a call: the
// in-frame credentials when the request carried them, else a user the
// transport authenticated (HTTP digest, a WebSocket handshake).
func (c *Client) presentedUser(inFrame bool) string {
	if inFrame && c.opts.Creds != nil {
		return c.opts.Creds.User
	}
	if a, ok := c.conn.(transport.AuthenticatedConn); ok {
		return a.AuthenticatedUser()
	}
	return ""
}

// CallInto is Call followed by json.Unmarshal of the result into out (out
// may be nil to discard the result).
func (c *Client) CallInto(ctx context.Context, method string, params, out any) error {
	res, err := c.Call(ctx, method, params)
	if err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(res, out); err != nil {
		return fmt.Errorf("%s: unexpected result %.200s: %w", method, res, err)
	}
	return nil
}

// Notify sends a request without id: the device runs it and sends no reply.
func (c *Client) Notify(ctx context.Context, method string, params json.RawMessage) error {
	req := &frame.Frame{Src: c.opts.Src, Dst: c.opts.Dst, Method: method, Params: params}
	if err := c.conn.Send(ctx, req); err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	return nil
}

func (c *Client) roundTrip(ctx context.Context, req *frame.Frame) (*frame.Frame, error) {
	cl, err := c.register(req)
	if err != nil {
		return nil, err
	}
	if err := c.conn.Send(ctx, req); err != nil {
		c.forget(req.ID, cl)
		return nil, sendError(ctx, req, err)
	}
	return c.await(ctx, req, cl, nil)
}

// register makes room for the reply to req.
func (c *Client) register(req *frame.Frame) (*call, error) {
	cl := &call{method: req.Method, ch: make(chan reply, 1)}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dup != nil {
		return nil, c.dup
	}
	if c.readErr != nil {
		return nil, &LinkError{Method: req.Method, Err: fmt.Errorf("connection lost: %w", c.readErr)}
	}
	// The digest retry sends the same id again: its reply is not a second
	// answer to the first.
	c.answered.forget(req.ID)
	cl.sent = time.Now()
	c.pending[req.ID] = cl
	return cl, nil
}

// forget gives up waiting for the reply to id.
func (c *Client) forget(id int64, cl *call) {
	c.mu.Lock()
	if c.pending[id] == cl {
		delete(c.pending, id)
	}
	c.mu.Unlock()
}

// sendError is the error of a call whose Send failed.
func sendError(ctx context.Context, req *frame.Frame, err error) error {
	var nr *transport.NotRPCError
	if errors.As(err, &nr) {
		// HTTP: the answer to this very request was unreadable.
		return &BadReplyError{Method: req.Method, Err: err}
	}
	if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
		err = fmt.Errorf("%w (%v)", ctxErr, err)
	}
	return &LinkError{Method: req.Method, Err: err}
}

// await waits for the reply to req. sent, if not nil, delivers the result
// of a Send still running: a failure ends the wait.
func (c *Client) await(ctx context.Context, req *frame.Frame, cl *call, sent <-chan error) (*frame.Frame, error) {
	for {
		select {
		case r := <-cl.ch:
			return r.f, r.err
		case err := <-sent:
			sent = nil
			if err == nil {
				continue
			}
			c.forget(req.ID, cl)
			select { // a reply (or a verdict on it) may have landed meanwhile
			case r := <-cl.ch:
				return r.f, r.err
			default:
			}
			return nil, sendError(ctx, req, err)
		case <-ctx.Done():
			c.forget(req.ID, cl)
			select { // a reply (or a verdict on it) may have landed meanwhile
			case r := <-cl.ch:
				return r.f, r.err
			default:
			}
			return nil, &LinkError{Method: req.Method, Err: fmt.Errorf("no reply: %w", ctx.Err())}
		case <-c.done:
			c.forget(req.ID, cl)
			// A reply may have landed just before the reader stopped.
			select {
			case r := <-cl.ch:
				return r.f, r.err
			default:
			}
			c.mu.Lock()
			err := c.readErr
			c.mu.Unlock()
			return nil, &LinkError{Method: req.Method, Err: fmt.Errorf("connection lost: %w", err)}
		}
	}
}

// answer is what the client remembers of an answered request.
type answer struct {
	method string
	src    string
}

// recentAnswers is how many answered request ids the client remembers to
// notice a second reply to one of them. Replies to a request come within a
// few round trips of each other; 256 covers a push with a deep window.
const recentAnswers = 256

// recentReplies remembers the last recentAnswers answered request ids.
type recentReplies struct {
	ring [recentAnswers]int64
	next int
	by   map[int64]slotted
}

type slotted struct {
	answer
	slot int
}

func (r *recentReplies) add(id int64, a answer) {
	if r.by == nil {
		// Not sized for recentAnswers: most clients live for a few calls
		// (each update dials several), and the map grows when one lives on.
		r.by = make(map[int64]slotted)
	}
	if old := r.ring[r.next]; old != 0 {
		if s, ok := r.by[old]; ok && s.slot == r.next {
			delete(r.by, old)
		}
	}
	r.ring[r.next] = id
	r.by[id] = slotted{answer: a, slot: r.next}
	r.next = (r.next + 1) % recentAnswers
}

func (r *recentReplies) get(id int64) (answer, bool) {
	s, ok := r.by[id]
	return s.answer, ok
}

// forget drops id (its slot in the ring is reused in turn).
func (r *recentReplies) forget(id int64) {
	delete(r.by, id)
}
