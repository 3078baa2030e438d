// Package ws is the WebSocket transport of the Mongoose OS RPC protocol
// (docs/protocol.md, "WebSocket"), both ends: the client Dial used by otactl
// (ws:// and wss://, subprotocol clubby.cesanta.com, one text message per
// frame) and the device-side Handler used by the emulator.
package ws

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
)

// Subprotocol is the WebSocket subprotocol of Mongoose OS RPC, offered by
// the client and selected by the device.
const Subprotocol = "clubby.cesanta.com"

// DefaultPath is the request path used when the URL has none.
const DefaultPath = "/rpc"

// closeWait bounds the close handshake message written by Close.
const closeWait = time.Second

// Conn is a client WebSocket connection to a device. It implements
// transport.Conn.
type Conn struct {
	ws       *websocket.Conn
	opts     transport.Options
	display  string // URL for messages, secrets redacted
	authUser string // the user the handshake's digest answer established

	wsem chan struct{} // capacity 1: held while writing a message

	in       chan incoming // from the reader goroutine
	readDone chan struct{} // closed when the reader goroutine ends
	readErr  error         // why the reader ended; set before readDone closes

	closeOnce sync.Once
	closed    chan struct{}
}

// Dial opens a WebSocket connection to u (ws:// or wss://; an empty path
// means /rpc), offering the clubby.cesanta.com subprotocol. User info in the
// URL (ws://TOKEN@host/rpc) is sent as "Authorization: Bearer TOKEN", as mos
// does (user:pass becomes "Bearer user:pass"); it never appears in errors or
// logs. For wss, opts.TLS is used as given (nil means the system roots).
// ctx bounds the handshake only.
func Dial(ctx context.Context, u *url.URL, opts transport.Options) (transport.Conn, error) {
	if u == nil {
		return nil, fmt.Errorf("%w: no URL given for the WebSocket transport", transport.ErrBadPort)
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme != "ws" && scheme != "wss" {
		return nil, fmt.Errorf("%w: %s is not a ws:// or wss:// URL", transport.ErrBadPort, transport.Redact(u))
	}
	if u.Host == "" || u.Hostname() == "" || u.Opaque != "" {
		return nil, fmt.Errorf("%w: %s has no host: use for example ws://192.168.4.1/rpc", transport.ErrBadPort, transport.Redact(u))
	}
	dialURL := *u
	dialURL.Scheme = scheme
	dialURL.User = nil // gorilla refuses user info; it goes in a header
	dialURL.Fragment = ""
	dialURL.RawFragment = ""
	if dialURL.Path == "" {
		dialURL.Path = DefaultPath
		dialURL.RawPath = ""
	}
	shown := dialURL
	shown.User = u.User
	display := transport.Redact(&shown)

	hdr := http.Header{}
	if u.User != nil {
		token := u.User.Username()
		if pass, ok := u.User.Password(); ok {
			token += ":" + pass
		}
		hdr.Set("Authorization", "Bearer "+token)
	}
	d := websocket.Dialer{
		// A device is usually on the local network: like mos, no proxy.
		Proxy:          nil,
		NetDialContext: (&net.Dialer{}).DialContext,
		Subprotocols:   []string{Subprotocol},
	}
	cw := &transport.CertWatch{}
	if scheme == "wss" {
		d.TLSClientConfig = cw.Watch(opts.TLS)
	}
	ws, resp, body, err := handshake(ctx, &d, dialURL.String(), hdr)
	authUser := ""
	if err != nil && resp != nil && resp.StatusCode == http.StatusUnauthorized &&
		strings.HasPrefix(strings.ToLower(resp.Header.Get("WWW-Authenticate")), "digest") {
		// The device (or its HTTP server) wants HTTP digest authentication
		// of the handshake: answer it with the credentials.
		ch, perr := transport.ParseDigestChallenge(resp.Header.Get("WWW-Authenticate"))
		switch {
		case opts.Creds == nil:
			realm := ""
			if ch != nil {
				realm = ch.Realm
			}
			return nil, &transport.AuthError{Kind: transport.AuthRequired, Where: display, How: "WebSocket handshake, HTTP digest", Realm: realm}
		case perr != nil:
			return nil, fmt.Errorf("WebSocket handshake with %s: the device answered 401 with a challenge otactl cannot answer (%v): %w", display, perr, transport.ErrAuth)
		}
		hdr.Set("Authorization", ch.Authorization(opts.Creds, http.MethodGet, dialURL.RequestURI()))
		ws, resp, body, err = handshake(ctx, &d, dialURL.String(), hdr)
		if err != nil && resp != nil && resp.StatusCode == http.StatusUnauthorized {
			return nil, &transport.AuthError{Kind: transport.AuthRefused, User: opts.Creds.User, Where: display, How: "WebSocket handshake, HTTP digest", Realm: ch.Realm}
		}
		authUser = opts.Creds.User
	}
	if err != nil {
		return nil, dialError(ctx, display, resp, body, err, cw)
	}
	if got := ws.Subprotocol(); got != "" && got != Subprotocol {
		ws.Close()
		return nil, fmt.Errorf("WebSocket at %s chose subprotocol %q, not %q: check that the URL points at a Mongoose OS device's RPC endpoint", display, got, Subprotocol)
	}
	// Messages longer than MaxFrame are reported as not RPC frames and
	// skipped; the hard limit bounds how much of one is read and thrown
	// away before the connection is given up.
	ws.SetReadLimit(hardLimit(opts.MaxFrame()))

	c := &Conn{
		ws:       ws,
		opts:     opts,
		display:  display,
		authUser: authUser,
		wsem:     make(chan struct{}, 1),
		in:       make(chan incoming, 16),
		readDone: make(chan struct{}),
		closed:   make(chan struct{}),
	}
	go c.readLoop()
	return c, nil
}

// handshake dials once and reads (a little of) the body of a refused
// handshake's answer.
func handshake(ctx context.Context, d *websocket.Dialer, u string, hdr http.Header) (*websocket.Conn, *http.Response, []byte, error) {
	ws, resp, err := d.DialContext(ctx, u, hdr)
	var body []byte
	if resp != nil && resp.Body != nil {
		body, _ = io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		resp.Body.Close()
	}
	return ws, resp, body, err
}

// AuthenticatedUser returns the user whose digest answer the handshake
// carried, or "" (transport.AuthenticatedConn).
func (c *Conn) AuthenticatedUser() string { return c.authUser }

// dialError explains a failed handshake. It never includes the token: the
// display URL is redacted and gorilla's errors do not carry the header.
func dialError(ctx context.Context, display string, resp *http.Response, body []byte, err error, cw *transport.CertWatch) error {
	if ctx.Err() != nil {
		return fmt.Errorf("WebSocket connection to %s: %w", display, ctx.Err())
	}
	if errors.Is(err, websocket.ErrBadHandshake) && resp != nil {
		hint := "check that the URL points at the device's RPC endpoint (ws://HOST/rpc) and that the firmware includes the rpc-ws library"
		switch resp.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			hint = "the device refused the credentials: check the token in the URL (ws://TOKEN@HOST/rpc), or pass --rpc-creds user:pass for HTTP digest authentication"
		case http.StatusServiceUnavailable:
			hint = "WebSocket RPC is disabled on the device: set rpc.ws.enable=true or use http://"
		}
		if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
			return fmt.Errorf("WebSocket handshake with %s failed: HTTP %s: %s: %w", display, resp.Status, hint, transport.ErrAuth)
		}
		// Something answered the handshake, but not as a WebSocket RPC
		// endpoint does.
		e := transport.NewNotRPCError("HTTP "+resp.Status+" instead of a WebSocket upgrade", "", body, display)
		e.Hint = hint
		return e
	}
	if te := transport.ExplainTLS(err, "device", display, "ws://", cw); te != nil {
		return te
	}
	return fmt.Errorf("WebSocket connection to %s failed: %w: check that the device is powered, on the network, and that the address is right", display, err)
}

// incoming is what the reader hands to Recv: a frame, or the error for a
// message that is not one.
type incoming struct {
	f   *frame.Frame
	err error
}

// hardLimit is the WebSocket read limit for a reply bound of max bytes: a
// longer message is read (and thrown away) up to this size, so that the
// connection stays usable; past it the connection is given up.
func hardLimit(max int) int64 { return int64(max)*16 + 2 }

// readLoop is the one reader of the connection. A read error is permanent:
// it is stored for Recv and the loop ends. A message that is not an RPC
// frame is handed to Recv as a *transport.NotRPCError.
func (c *Conn) readLoop() {
	defer close(c.readDone)
	max := c.opts.MaxFrame()
	for {
		typ, r, err := c.ws.NextReader()
		if err != nil {
			if errors.Is(err, websocket.ErrReadLimit) {
				c.hand(incoming{err: transport.NewNotRPCError("a WebSocket message",
					fmt.Sprintf("larger than %d bytes, the most otactl reads of a reply", max), nil, c.display)})
			}
			c.readErr = err
			return
		}
		if typ != websocket.TextMessage && typ != websocket.BinaryMessage {
			continue
		}
		kind := "a WebSocket text message"
		if typ == websocket.BinaryMessage {
			kind = "a WebSocket binary message"
		}
		// Room for a trailing "\r\n" after a frame of max bytes.
		data, err := io.ReadAll(io.LimitReader(r, int64(max)+3))
		if err == nil && len(data) > max+2 {
			_, err = io.Copy(io.Discard, r)
			e := transport.NewNotRPCError(kind, fmt.Sprintf("larger than %d bytes, the most otactl reads of a reply", max), nil, c.display)
			e.Excerpt = transport.ExcerptCut(data[:max])
			if !c.hand(incoming{err: e}) {
				return
			}
		} else if err == nil {
			c.opts.DebugFrame("recv", data)
			f, reason := transport.ParseReply(data)
			in := incoming{f: f}
			if f == nil {
				e := transport.NewNotRPCError(kind, reason, data, c.display)
				e.Hint = "check that the URL points at a Mongoose OS device's RPC endpoint (ws://HOST/rpc)"
				in = incoming{err: e}
			}
			if !c.hand(in) {
				return
			}
		}
		if err != nil {
			if errors.Is(err, websocket.ErrReadLimit) {
				e := transport.NewNotRPCError(kind, fmt.Sprintf("larger than %d bytes, the most otactl reads of a reply", max), nil, c.display)
				e.Excerpt = transport.ExcerptCut(data[:min(len(data), max)])
				c.hand(incoming{err: e})
			}
			c.readErr = err
			return
		}
	}
}

// hand passes in to Recv; it reports false once the connection is closed.
func (c *Conn) hand(in incoming) bool {
	select {
	case c.in <- in:
		return true
	case <-c.closed:
		return false
	}
}

// Send writes f as one text message, followed by "\n" as mos does. Writes
// are serialised; ctx bounds the wait for the writer and the write itself.
// A write cut short by ctx breaks the connection (a partial message cannot
// be taken back).
func (c *Conn) Send(ctx context.Context, f *frame.Frame) error {
	select {
	case <-c.closed:
		return transport.ErrClosed
	default:
	}
	b, err := frame.Marshal(f)
	if err != nil {
		return fmt.Errorf("encode frame for %s: %w", c.display, err)
	}
	c.opts.DebugFrame("send", b)
	msg := append(b, '\n')

	select {
	case c.wsem <- struct{}{}:
	case <-c.closed:
		return transport.ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-c.wsem }()
	if err := ctx.Err(); err != nil {
		return err
	}

	deadline, _ := ctx.Deadline() // zero: no deadline
	_ = c.ws.SetWriteDeadline(deadline)
	// Cancel a write in progress by expiring the socket's deadline; wait
	// for that to finish before the next writer sets its own deadline.
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(fired)
		_ = c.ws.NetConn().SetWriteDeadline(time.Unix(1, 0))
	})
	err = c.ws.WriteMessage(websocket.TextMessage, msg)
	if !stop() {
		<-fired
	}
	if err != nil {
		select {
		case <-c.closed:
			return transport.ErrClosed
		default:
		}
		if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
			// Only ctx sets write deadlines, so it is ending; the socket's
			// timer may just fire before ctx's own. (gorilla replaces
			// timeout errors, so os.ErrDeadlineExceeded is not in the chain.)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
		if ctx.Err() != nil {
			return fmt.Errorf("WebSocket write to %s: %w (the connection is now unusable, reconnect)", c.display, ctx.Err())
		}
		return fmt.Errorf("WebSocket write to %s failed: %w: the connection is broken, reconnect", c.display, err)
	}
	return nil
}

// Recv returns the next frame from the device. After the connection broke
// it returns the read error, every time.
func (c *Conn) Recv(ctx context.Context) (*frame.Frame, error) {
	select {
	case <-c.closed:
		return nil, transport.ErrClosed
	default:
	}
	select {
	case in := <-c.in:
		return in.f, in.err
	case <-c.closed:
		return nil, transport.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-c.readDone:
		// Frames read before the error come first.
		select {
		case in := <-c.in:
			return in.f, in.err
		default:
		}
		select {
		case <-c.closed:
			return nil, transport.ErrClosed
		default:
		}
		return nil, c.readError()
	}
}

func (c *Conn) readError() error {
	err := c.readErr
	if websocket.IsCloseError(err, websocket.CloseNormalClosure, websocket.CloseGoingAway) {
		return fmt.Errorf("device at %s closed the WebSocket connection (%w): reconnect (it may be rebooting)", c.display, err)
	}
	if errors.Is(err, websocket.ErrReadLimit) {
		return fmt.Errorf("device at %s sent a frame larger than %d bytes (%w): raise the frame size limit (MaxFrameSize)", c.display, c.opts.MaxFrame(), err)
	}
	return fmt.Errorf("WebSocket connection to %s broke: %w: reconnect", c.display, err)
}

// Close sends a close message (best effort), closes the connection, and
// waits for the reader goroutine to end. Pending Recv and Send calls return
// ErrClosed. It is idempotent.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		close(c.closed)
		// Say goodbye unless a write is stuck (then the peer is not
		// reading anyway).
		select {
		case c.wsem <- struct{}{}:
			_ = c.ws.WriteControl(websocket.CloseMessage,
				websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(closeWait))
			<-c.wsem
		default:
		}
		_ = c.ws.Close()
		<-c.readDone
	})
	return nil
}
