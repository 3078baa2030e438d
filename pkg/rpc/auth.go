package rpc

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
)

// AuthError is an authentication or authorisation failure (it matches
// ErrAuth, and ErrForbidden for a 403); see transport.AuthError.
type AuthError = transport.AuthError

// ErrForbidden is matched by the error of a call the device's ACL refused
// (error 403 "unauthorized"). It matches ErrAuth too.
var ErrForbidden = transport.ErrForbidden

// challenge is the JSON carried in the message of a 401 error reply
// (docs/security.md): {"auth_type": "digest", "nonce": N, "nc": 1,
// "realm": "…", "algorithm": "MD5"|"SHA-256"} (older firmware sends no
// algorithm, which means MD5).
type challenge struct {
	AuthType  string `json:"auth_type"`
	Nonce     int64  `json:"nonce"`
	NC        int    `json:"nc"`
	Realm     string `json:"realm"`
	Algorithm string `json:"algorithm"`
}

func parseChallenge(msg string) (*challenge, error) {
	var ch challenge
	if err := json.Unmarshal([]byte(msg), &ch); err != nil {
		return nil, err
	}
	if !strings.EqualFold(ch.AuthType, "digest") {
		return nil, fmt.Errorf("unsupported auth type %q", ch.AuthType)
	}
	if _, err := transport.DigestHash(ch.Algorithm); err != nil {
		return nil, err
	}
	return &ch, nil
}

// answer is the "auth" object answering ch with creds and a new cnonce.
func (ch *challenge) answer(creds *transport.Credentials) *frame.Auth {
	cnonce := transport.NewCNonce()
	return &frame.Auth{
		Realm:     ch.Realm,
		Username:  creds.User,
		Nonce:     ch.Nonce,
		CNonce:    cnonce,
		Algorithm: ch.Algorithm,
		Response:  DigestResponse(ch.Algorithm, creds.User, ch.Realm, creds.Password, ch.Nonce, cnonce),
	}
}

// Fixed parts of the in-frame digest: a device hashes these instead of an
// HTTP method and URI, with nc "1" and qop "auth".
const (
	inFrameMethod = "dummy_method"
	inFrameURI    = "dummy_uri"
)

// DigestResponse computes the in-frame digest response:
// H(H(user:realm:pass):nonce:1:cnonce:auth:H("dummy_method:dummy_uri")),
// H being MD5 or SHA-256 (algorithm "MD5", "SHA-256"; empty means MD5), in
// lower-case hex. The device side uses it to check an answer.
func DigestResponse(algorithm, user, realm, pass string, nonce, cnonce int64) string {
	return InFrameResponse(algorithm, transport.DigestHA1(algorithm, user, realm, pass),
		strconv.FormatInt(nonce, 10), strconv.FormatInt(cnonce, 10))
}

// InFrameResponse is DigestResponse from HA1 (an htdigest file's hash of
// user:realm:password) and the nonce and cnonce as the frame spells them.
func InFrameResponse(algorithm, ha1, nonce, cnonce string) string {
	return transport.DigestResponse(algorithm, ha1, nonce, "1", cnonce, "auth", inFrameMethod, inFrameURI)
}
