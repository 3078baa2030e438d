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
	Creds *transport.Credentials
	// Logger gets debug lines about unmatched replies. Nil: none.
	Logger *slog.Logger
}

// Client makes RPC calls over one transport.Conn. It is safe for concurrent
// use; replies are matched to calls by id only.
type Client struct {
	conn transport.Conn
	opts ClientOptions

	mu      sync.Mutex
	pending map[int64]chan *frame.Frame
	readErr error
	done    chan struct{} // closed when the reader stops
}

// NewClient starts a client over conn. The client owns conn: Close closes it.
func NewClient(conn transport.Conn, opts ClientOptions) *Client {
	if opts.Src == "" {
		opts.Src = DefaultSrc
	}
	c := &Client{
		conn:    conn,
		opts:    opts,
		pending: map[int64]chan *frame.Frame{},
		done:    make(chan struct{}),
	}
	go c.readLoop()
	return c
}

// NewID returns a random request id in [2^40, 2^41), as mos does.
func NewID() int64 {
	return 1<<40 + rand.Int64N(1<<40)
}

func (c *Client) readLoop() {
	defer close(c.done)
	for {
		f, err := c.conn.Recv(context.Background())
		if err != nil {
			c.mu.Lock()
			c.readErr = err
			c.mu.Unlock()
			return
		}
		if f.IsRequest() {
			continue // the device calling us: not supported, ignore
		}
		c.mu.Lock()
		ch, ok := c.pending[f.ID]
		if ok {
			delete(c.pending, f.ID)
		}
		c.mu.Unlock()
		if !ok {
			if c.opts.Logger != nil {
				c.opts.Logger.Debug("reply matches no pending call", "id", f.ID)
			}
			continue
		}
		ch <- f // buffered, one reply per registration
	}
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
	resp, err := c.roundTrip(ctx, req)
	if err != nil {
		return nil, err
	}
	if resp.Error != nil && resp.Error.Code == 401 {
		ch, perr := parseChallenge(resp.Error.Message)
		if perr != nil {
			return nil, &Error{Method: method, Code: 401, Message: resp.Error.Message}
		}
		if c.opts.Creds == nil {
			return nil, fmt.Errorf("%s: %w: the device requires credentials: pass --rpc-creds user:pass", method, ErrAuth)
		}
		req.Auth = ch.answer(c.opts.Creds)
		if resp, err = c.roundTrip(ctx, req); err != nil {
			return nil, err
		}
		if resp.Error != nil && resp.Error.Code == 401 {
			return nil, fmt.Errorf("%s: %w: the device refused the credentials for user %q: check --rpc-creds", method, ErrAuth, c.opts.Creds.User)
		}
	}
	if resp.Error != nil && resp.Error.Code != 0 {
		return nil, &Error{Method: method, Code: resp.Error.Code, Message: resp.Error.Message}
	}
	if len(resp.Result) == 0 {
		return json.RawMessage("null"), nil
	}
	return resp.Result, nil
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
	ch := make(chan *frame.Frame, 1)
	c.mu.Lock()
	if c.readErr != nil {
		err := c.readErr
		c.mu.Unlock()
		return nil, &LinkError{Method: req.Method, Err: fmt.Errorf("connection lost: %w", err)}
	}
	c.pending[req.ID] = ch
	c.mu.Unlock()
	forget := func() {
		c.mu.Lock()
		delete(c.pending, req.ID)
		c.mu.Unlock()
	}
	if err := c.conn.Send(ctx, req); err != nil {
		forget()
		if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
			err = fmt.Errorf("%w (%v)", ctxErr, err)
		}
		return nil, &LinkError{Method: req.Method, Err: err}
	}
	select {
	case resp := <-ch:
		return resp, nil
	case <-ctx.Done():
		forget()
		return nil, &LinkError{Method: req.Method, Err: fmt.Errorf("no reply: %w", ctx.Err())}
	case <-c.done:
		forget()
		// A reply may have landed just before the reader stopped.
		select {
		case resp := <-ch:
			return resp, nil
		default:
		}
		c.mu.Lock()
		err := c.readErr
		c.mu.Unlock()
		return nil, &LinkError{Method: req.Method, Err: fmt.Errorf("connection lost: %w", err)}
	}
}
