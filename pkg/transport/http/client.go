// Package httptransport is the HTTP transport of the Mongoose OS RPC protocol
// (docs/protocol.md, "HTTP"), both ends: the client Dial used by otactl, which
// POSTs each request frame to http(s)://host/rpc and queues the reply frame
// for Recv, and the device-side NewHandler used by the emulator, which serves
// POST /rpc (whole frames) and POST /rpc/<Method> (bare arguments and result)
// the way a real device does, and can share its listener with the WebSocket
// transport.
package httptransport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync"

	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
)

// DefaultPath is the request path used when the URL has none; a device
// serves RPC at /rpc.
const DefaultPath = "/rpc"

// Conn is an HTTP client connection to a device. HTTP is connectionless: each
// Send is one POST whose reply frame is queued for Recv. It implements
// transport.Conn.
type Conn struct {
	url      *url.URL // request URL: no user info, path defaulted
	display  string   // URL for messages, secrets redacted
	opts     transport.Options
	creds    *transport.Credentials // for HTTP digest authentication
	client   *http.Client
	tr       *http.Transport
	certs    *transport.CertWatch // whether the device asked for a client certificate we lacked
	closeCtx context.Context      // done after Close
	cancel   context.CancelFunc

	mu    sync.Mutex
	queue []*frame.Frame
	ready chan struct{} // capacity 1: signalled when queue gets a frame
	// digest is the device's last HTTP digest challenge that c.creds
	// answered successfully: later requests answer it up front (its nonce
	// stays valid for an hour on a device), saving a 401 round trip each.
	digest *transport.DigestChallenge
}

// Dial returns a Conn that POSTs frames to u (http:// or https://). An empty
// path means /rpc. It validates u but does not contact the device, since
// HTTP is connectionless: the first Send does.
//
// For https, opts.TLS is used as given (nil means the system roots);
// certificates are verified unless the caller's config says otherwise.
// User info in u (http://user:pass@host/rpc) is never sent in the clear: it
// is kept as credentials for HTTP digest authentication when opts.Creds is
// nil.
func Dial(ctx context.Context, u *url.URL, opts transport.Options) (transport.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if u == nil {
		return nil, fmt.Errorf("%w: no URL given for the HTTP transport", transport.ErrBadPort)
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme != "http" && scheme != "https" {
		return nil, fmt.Errorf("%w: %s is not an http:// or https:// URL", transport.ErrBadPort, transport.Redact(u))
	}
	if u.Host == "" || u.Hostname() == "" {
		return nil, fmt.Errorf("%w: %s has no host: use for example http://192.168.4.1/rpc", transport.ErrBadPort, transport.Redact(u))
	}
	if u.Opaque != "" {
		return nil, fmt.Errorf("%w: %s is not a valid HTTP URL: use for example http://192.168.4.1/rpc", transport.ErrBadPort, transport.Redact(u))
	}
	if p := u.Port(); p != "" {
		if _, err := net.LookupPort("tcp", p); err != nil {
			return nil, fmt.Errorf("%w: %s has a bad port number %q", transport.ErrBadPort, transport.Redact(u), p)
		}
	}

	reqURL := *u
	reqURL.Scheme = scheme
	// Never let net/http turn the URL's user info into a Basic auth header:
	// that would send the password in the clear.
	reqURL.User = nil
	reqURL.Fragment = ""
	reqURL.RawFragment = ""
	if reqURL.Path == "" {
		reqURL.Path = DefaultPath
		reqURL.RawPath = ""
	}

	creds := opts.Creds
	if creds == nil && u.User != nil {
		pass, _ := u.User.Password()
		creds = &transport.Credentials{User: u.User.Username(), Password: pass}
	}

	tr := &http.Transport{
		// A device is usually on the local network: like mos, do not go
		// through a proxy from the environment.
		Proxy:             nil,
		DialContext:       (&net.Dialer{}).DialContext,
		ForceAttemptHTTP2: false,
		// A push keeps several requests in flight (otactl push --window):
		// keep their connections for the next ones rather than open new
		// ones to a small device.
		MaxIdleConns:        16,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     0,
	}
	cw := &transport.CertWatch{}
	if scheme == "https" {
		tr.TLSClientConfig = cw.Watch(opts.TLS)
	}
	closeCtx, cancel := context.WithCancel(context.Background())
	shown := reqURL
	shown.User = u.User
	display := transport.Redact(&shown)
	return &Conn{
		url:     &reqURL,
		display: display,
		opts:    opts,
		creds:   creds,
		tr:      tr,
		certs:   cw,
		client: &http.Client{
			Transport: tr,
			// A device does not redirect; following one could send frames
			// somewhere unexpected.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		closeCtx: closeCtx,
		cancel:   cancel,
		ready:    make(chan struct{}, 1),
	}, nil
}

// Send POSTs f to the device and waits for the HTTP reply under ctx; the
// reply frame, if any, is queued for Recv. A request without id gets an
// empty reply body, and nothing is queued. Send may be called from several
// goroutines at once; each call is its own POST.
func (c *Conn) Send(ctx context.Context, f *frame.Frame) error {
	if c.closeCtx.Err() != nil {
		return transport.ErrClosed
	}
	b, err := frame.Marshal(f)
	if err != nil {
		return fmt.Errorf("encode frame for %s: %w", c.display, err)
	}
	c.opts.DebugFrame("send", b)
	body := append(b, '\n')

	// The POST ends when ctx ends or the connection is closed.
	reqCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(c.closeCtx, cancel)
	defer stop()

	reply, err := c.postAuth(reqCtx, f.Method, body)
	if err == nil {
		err = c.checkReply(f, bytes.TrimSpace(reply))
	}
	if err != nil {
		// An answer to a request the caller gave up on says nothing (the
		// device side may end it empty when the request goes away).
		switch {
		case c.closeCtx.Err() != nil:
			return transport.ErrClosed
		case ctx.Err() != nil:
			return fmt.Errorf("HTTP POST to %s: %w", c.display, ctx.Err())
		}
		return err
	}
	return nil
}

// checkReply queues the reply frame to request f, or says why reply is not
// one.
func (c *Conn) checkReply(f *frame.Frame, reply []byte) error {
	if len(reply) == 0 {
		// A request without id gets no reply. For one with an id an empty
		// 200 is no answer either: nothing is queued, and the call waits
		// for its timeout, as for a silent device. (A device that reboots
		// while the call is in flight breaks the connection instead, which
		// fails the call at once as a lost link.)
		return nil
	}
	c.opts.DebugFrame("recv", reply)
	rf, reason := transport.ParseReply(reply)
	if rf == nil {
		return c.notRPC("an HTTP 200 reply", reason, reply, "check that the URL points at the device's RPC endpoint, e.g. http://HOST/rpc")
	}
	if f.ID != 0 && rf.ID != f.ID && !rf.IsRequest() {
		return c.notRPC("an HTTP 200 reply", fmt.Sprintf("a frame with id %d, but the request had id %d", rf.ID, f.ID), reply,
			"check that nothing between otactl and the device (a proxy, a cache) mixes up answers")
	}
	c.push(rf)
	return nil
}

// notRPC is the error for an answer that is not an RPC frame.
func (c *Conn) notRPC(what, reason string, data []byte, hint string) error {
	e := transport.NewNotRPCError(what, reason, data, c.display)
	e.Hint = hint
	return e
}

// postAuth POSTs body and answers the device's HTTP digest challenge
// (docs/security.md): a 401 with "WWW-Authenticate: Digest …" is answered
// once with c.creds, and a challenge answered successfully is answered up
// front on later requests. A 401 to a fresh answer means the credentials
// were refused. method names the RPC method in errors.
func (c *Conn) postAuth(ctx context.Context, method string, body []byte) ([]byte, error) {
	c.mu.Lock()
	cached := c.digest
	c.mu.Unlock()
	authz := ""
	if cached != nil && c.creds != nil {
		authz = cached.Authorization(c.creds, http.MethodPost, c.url.RequestURI())
	}
	data, err := c.post(ctx, body, authz)
	var un *unauthorized
	if !errors.As(err, &un) {
		return data, err
	}
	ch, perr := transport.ParseDigestChallenge(un.www)
	realm := ""
	if ch != nil {
		realm = ch.Realm
	}
	switch {
	case c.creds == nil:
		return nil, &transport.AuthError{Kind: transport.AuthRequired, Method: method, Where: c.display, How: "HTTP digest", Realm: realm}
	case perr != nil:
		return nil, fmt.Errorf("%s: the device at %s answered 401 with a challenge otactl cannot answer (%v): %w", method, c.display, perr, transport.ErrAuth)
	}
	if cached != nil {
		// The nonce went stale, or the device forgot it: a fresh one.
		c.setDigest(nil)
	}
	data, err = c.post(ctx, body, ch.Authorization(c.creds, http.MethodPost, c.url.RequestURI()))
	if errors.As(err, &un) {
		return nil, &transport.AuthError{Kind: transport.AuthRefused, User: c.creds.User, Method: method, Where: c.display, How: "HTTP digest", Realm: realm}
	}
	if err == nil {
		c.setDigest(ch)
	}
	return data, err
}

func (c *Conn) setDigest(ch *transport.DigestChallenge) {
	c.mu.Lock()
	c.digest = ch
	c.mu.Unlock()
}

// AuthenticatedUser returns the user whose HTTP digest answer the device
// accepted, or "" (transport.AuthenticatedConn).
func (c *Conn) AuthenticatedUser() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.digest == nil || c.creds == nil {
		return ""
	}
	return c.creds.User
}

// unauthorized is a 401 answer; www is its WWW-Authenticate header.
type unauthorized struct{ www string }

func (u *unauthorized) Error() string { return "HTTP 401 Unauthorized" }

// post does one POST of body (with an Authorization header when authz is
// set) and returns the reply body of a 200 answer; a 401 is an
// *unauthorized.
func (c *Conn) post(ctx context.Context, body []byte, authz string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url.String(), bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("build HTTP request for %s: %w", c.display, err)
	}
	req.Header.Set("Content-Type", "application/json")
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	// Tell a caller keeping several requests in flight that this one is on
	// its way (transport.WithSent), so that the next one follows it.
	req = req.WithContext(httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteRequest: func(httptrace.WroteRequestInfo) { transport.Sent(ctx) },
	}))
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, c.requestError(err)
	}
	defer resp.Body.Close()

	switch {
	case resp.StatusCode == http.StatusUnauthorized:
		drain(resp.Body)
		return nil, &unauthorized{www: resp.Header.Get("WWW-Authenticate")}
	case resp.StatusCode != http.StatusOK:
		// Something answered, but not with an RPC reply (docs/protocol.md,
		// "HTTP": a non-200 other than 401 is no reply): show what it said.
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		drain(resp.Body)
		return nil, c.notRPC("HTTP "+resp.Status, "", body, statusHint(resp.StatusCode))
	}

	max := c.opts.MaxFrame()
	data, err := io.ReadAll(io.LimitReader(resp.Body, int64(max)+1))
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("read reply from %s: %w: check the network link to the device", c.display, err)
	}
	if len(data) > max {
		// Do not read the rest: a device's frame is a few KiB at most.
		e := transport.NewNotRPCError("an HTTP 200 reply", fmt.Sprintf("larger than %d bytes, the most otactl reads of a reply", max), nil, c.display)
		e.Excerpt = transport.ExcerptCut(data[:max])
		e.Hint = "check that the URL points at the device's RPC endpoint, e.g. http://HOST/rpc"
		return nil, e
	}
	return data, nil
}

// requestError turns an error from http.Client.Do into one that says what to
// do. The request URL carries no user info, and the URL is replaced by the
// redacted display form anyway.
func (c *Conn) requestError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	if errors.Is(err, http.ErrSchemeMismatch) {
		return &transport.TLSError{Where: c.display, Err: err,
			Problem: "the TLS handshake failed: the device answered in plain HTTP",
			Hint:    "use http:// instead of https://"}
	}
	if te := transport.ExplainTLS(err, "device", c.display, "http://", c.certs); te != nil {
		return te
	}
	return fmt.Errorf("HTTP POST to %s failed: %w: check that the device is powered, on the network, and that the address is right", c.display, err)
}

// statusHint says what to do about a non-200 answer.
func statusHint(code int) string {
	switch {
	case code == http.StatusNotFound:
		return "the device has no RPC endpoint at this path: use http://HOST/rpc, and check that the firmware includes the rpc-service and HTTP RPC channel"
	case code == http.StatusRequestEntityTooLarge:
		return "the frame is larger than the device accepts (rpc.max_frame_size): send smaller frames"
	case code == http.StatusForbidden:
		return "the device refused the request: check its access settings"
	case code == http.StatusBadRequest:
		return "the device could not understand the request: check that the URL points at the device's RPC endpoint"
	case code >= 500:
		return "the device failed to handle the request: check the device log and try again"
	}
	return "check that the URL points at the device's RPC endpoint (e.g. http://HOST/rpc)"
}

// drain reads a little of a body so that the connection can be reused.
func drain(r io.Reader) {
	_, _ = io.Copy(io.Discard, io.LimitReader(r, 64<<10))
}

func (c *Conn) push(f *frame.Frame) {
	c.mu.Lock()
	c.queue = append(c.queue, f)
	c.mu.Unlock()
	select {
	case c.ready <- struct{}{}:
	default:
	}
}

// pop takes the oldest queued frame, if any, re-signalling ready when more
// remain so that another waiting Recv wakes up.
func (c *Conn) pop() *frame.Frame {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.queue) == 0 {
		return nil
	}
	f := c.queue[0]
	c.queue[0] = nil
	c.queue = c.queue[1:]
	if len(c.queue) > 0 {
		select {
		case c.ready <- struct{}{}:
		default:
		}
	}
	return f
}

// Recv returns the next queued reply frame, waiting for one until ctx ends
// or the connection is closed.
func (c *Conn) Recv(ctx context.Context) (*frame.Frame, error) {
	for {
		if c.closeCtx.Err() != nil {
			return nil, transport.ErrClosed
		}
		if f := c.pop(); f != nil {
			return f, nil
		}
		select {
		case <-c.ready:
		case <-c.closeCtx.Done():
			return nil, transport.ErrClosed
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Close cancels POSTs in flight, unblocks Recv and releases idle
// connections. It is idempotent.
func (c *Conn) Close() error {
	c.cancel()
	c.tr.CloseIdleConnections()
	return nil
}
