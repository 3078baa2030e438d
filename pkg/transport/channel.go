package transport

import (
	"context"
	"sync"
)

// Channel types, as a Mongoose OS device names its RPC channels (the
// "ch_type" of an rpc.acl entry; docs/security.md).
const (
	ChannelHTTP = "HTTP"
	ChannelWS   = "WS_in"
	ChannelUART = "UART"
	ChannelMQTT = "MQTT"
)

// Channel describes, on the device side, the link a request frame arrived
// on: what a device's RPC layer knows about its channel when it checks a
// call's authorisation. Each transport's device side attaches one to the
// ctx it passes to Handler.HandleFrame (ChannelFrom reads it).
type Channel struct {
	// Type is ChannelHTTP, ChannelWS, ChannelUART or ChannelMQTT.
	Type string
	// User is the user the channel itself authenticated: a WebSocket
	// connection whose handshake carried a valid Authorization header
	// (see HandshakeAuthenticator). Empty: none.
	User string
	// For ChannelHTTP: the request's method, URI (path and query) and
	// Authorization header, which a device checks as HTTP digest
	// authentication.
	HTTPMethod, HTTPURI, Authorization string

	mu        sync.Mutex
	challenge string
	aborted   bool
}

// Abort tells the transport that the device went away while this request
// was in flight (a reboot or a power cut): no answer will come, and the link
// breaks as a real device's reboot breaks its TCP connections. The HTTP
// transport closes the request's connection without an answer and the
// WebSocket transport closes its connection, so that the client sees a lost
// link at once instead of an empty answer that leaves it waiting for its
// timeout. Serial and MQTT ignore it: the device side of those links goes
// away by itself.
func (c *Channel) Abort() {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.aborted = true
	c.mu.Unlock()
}

// Aborted reports whether Abort was called.
func (c *Channel) Aborted() bool {
	if c == nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.aborted
}

// Challenge asks an HTTP channel to answer the request with "401
// Unauthorized" and this WWW-Authenticate value instead of a reply frame,
// as a device's HTTP channel does when a call needs a user and none was
// established. It reports false on other channels (they carry the
// challenge in an error frame instead).
func (c *Channel) Challenge(wwwAuthenticate string) bool {
	if c == nil || c.Type != ChannelHTTP {
		return false
	}
	c.mu.Lock()
	c.challenge = wwwAuthenticate
	c.mu.Unlock()
	return true
}

// Challenged returns the WWW-Authenticate value set by Challenge, if any.
func (c *Channel) Challenged() (string, bool) {
	if c == nil {
		return "", false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.challenge, c.challenge != ""
}

type channelKey struct{}

// WithChannel returns ctx carrying ch.
func WithChannel(ctx context.Context, ch *Channel) context.Context {
	return context.WithValue(ctx, channelKey{}, ch)
}

// ChannelFrom returns the channel ctx carries, or nil.
func ChannelFrom(ctx context.Context) *Channel {
	ch, _ := ctx.Value(channelKey{}).(*Channel)
	return ch
}

// HandshakeAuthenticator is implemented by device-side handlers that check
// the Authorization header of a WebSocket handshake, as a device does
// (docs/security.md): the WebSocket transport calls it once per connection
// and records the user it returns ("" for none) as the channel's User.
type HandshakeAuthenticator interface {
	AuthenticateHandshake(method, uri, authorization string) (user string)
}
