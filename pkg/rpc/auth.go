package rpc

import (
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"math/rand/v2"
	"strings"

	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
)

// challenge is the JSON carried in the message of a 401 error reply
// (wire-protocol.md §6).
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
	if _, err := digestHash(ch.Algorithm); err != nil {
		return nil, err
	}
	return &ch, nil
}

func digestHash(alg string) (func() hash.Hash, error) {
	switch strings.ToUpper(alg) {
	case "", "MD5":
		return md5.New, nil
	case "SHA-256":
		return sha256.New, nil
	}
	return nil, fmt.Errorf("unsupported digest algorithm %q", alg)
}

func (ch *challenge) answer(creds *transport.Credentials) *frame.Auth {
	cnonce := rand.Int64N(1 << 31)
	return &frame.Auth{
		Realm:     ch.Realm,
		Username:  creds.User,
		Nonce:     ch.Nonce,
		CNonce:    cnonce,
		Algorithm: ch.Algorithm,
		Response:  DigestResponse(ch.Algorithm, creds.User, ch.Realm, creds.Password, ch.Nonce, cnonce),
	}
}

// DigestResponse computes the in-frame digest response:
// H(H(user:realm:pass):nonce:1:cnonce:auth:H("dummy_method:dummy_uri")),
// H being MD5 or SHA-256 (algorithm "MD5", "SHA-256"; empty means MD5), in
// lower-case hex. The device side uses it to check an answer.
func DigestResponse(algorithm, user, realm, pass string, nonce, cnonce int64) string {
	newHash, err := digestHash(algorithm)
	if err != nil {
		newHash = md5.New
	}
	h := func(s string) string {
		x := newHash()
		x.Write([]byte(s))
		return hex.EncodeToString(x.Sum(nil))
	}
	ha1 := h(user + ":" + realm + ":" + pass)
	ha2 := h("dummy_method:dummy_uri")
	return h(fmt.Sprintf("%s:%d:1:%d:auth:%s", ha1, nonce, cnonce, ha2))
}
