package rpc

import (
	"math"
	"strings"

	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
)

// Envelope is what a request frame carries besides its method and params,
// and the largest frame the device takes over the link: enough to size the
// data of a frame (a push's OTA.Write) so that the whole frame fits.
type Envelope struct {
	// Limit is the largest request frame in bytes (the transport's
	// FrameBudget).
	Limit int
	// Src and Dst exactly as they go out ("" = omitted).
	Src, Dst string
	// Auth is the in-frame digest "auth" object a request may carry, at
	// its largest (AuthReserve); nil when the client has no credentials.
	Auth *frame.Auth
}

// RealmReserve is the length reserved for the realm of an in-frame auth
// object before the device's first challenge named it (a device's
// rpc.auth_domain; its default is the device's id or a short domain).
const RealmReserve = 64

// AuthReserve returns the largest "auth" object the client sends with
// user's credentials: the realm and algorithm of the device's challenge
// when known (realm "" and algorithm "": RealmReserve bytes and SHA-256,
// the longest digest), nonces of the most digits a nonce has, and the
// digest in hex.
func AuthReserve(user, realm, algorithm string) *frame.Auth {
	if realm == "" {
		realm = strings.Repeat("r", RealmReserve)
	}
	if algorithm == "" {
		algorithm = "SHA-256"
	}
	hexLen := 64 // SHA-256
	if strings.EqualFold(algorithm, "MD5") {
		hexLen = 32
	}
	return &frame.Auth{
		Realm: realm, Username: user,
		Nonce: math.MaxInt64, CNonce: math.MaxInt64,
		Algorithm: algorithm,
		Response:  strings.Repeat("f", hexLen),
	}
}

// Envelope returns the envelope of this client's requests: the
// transport's frame limit, src and dst (transport.BudgetOf), else the
// client's own, and, with credentials, the largest "auth" object for the
// user name given and the device's challenge as last answered (its realm
// and algorithm; RealmReserve and SHA-256 before any challenge). Call it
// after a first call, so that a device that wants authentication has
// named its realm.
func (c *Client) Envelope() Envelope {
	fb := transport.BudgetOf(c.conn)
	env := Envelope{Limit: fb.Limit, Src: c.opts.Src, Dst: c.opts.Dst}
	if fb.Src != "" {
		env.Src = fb.Src
	}
	if fb.Dst != "" {
		env.Dst = fb.Dst
	}
	if c.opts.Creds != nil {
		c.mu.Lock()
		ch := c.challenge
		c.mu.Unlock()
		var realm, alg string
		if ch != nil {
			realm, alg = ch.Realm, ch.Algorithm
			if alg == "" {
				alg = "MD5" // what a challenge without algorithm means
			}
		}
		env.Auth = AuthReserve(c.opts.Creds.User, realm, alg)
	}
	return env
}
