package transport

import (
	"crypto/md5"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"strconv"
	"strings"
)

// Digest algorithms, as a device names them (rpc.auth_algo 0 and 1).
const (
	DigestMD5    = "MD5"
	DigestSHA256 = "SHA-256"
)

// DigestHash returns the hash of a digest algorithm name: "MD5" (also
// the empty name, which means MD5) or "SHA-256". Upper/lower case does
// not matter here; a device compares names exactly, so send them as
// spelled above.
func DigestHash(alg string) (func() hash.Hash, error) {
	switch strings.ToUpper(alg) {
	case "", DigestMD5:
		return md5.New, nil
	case DigestSHA256:
		return sha256.New, nil
	}
	return nil, fmt.Errorf("unsupported digest algorithm %q (a device uses MD5 or SHA-256)", alg)
}

// DigestHex is H(parts joined by ":") in lower-case hex.
func DigestHex(newHash func() hash.Hash, parts ...string) string {
	h := newHash()
	for i, p := range parts {
		if i > 0 {
			h.Write([]byte{':'})
		}
		h.Write([]byte(p))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// DigestHA1 is H(user:realm:password), the value an htdigest file holds
// (docs/security.md). An unknown algorithm hashes with MD5.
func DigestHA1(alg, user, realm, password string) string {
	newHash, err := DigestHash(alg)
	if err != nil {
		newHash = md5.New
	}
	return DigestHex(newHash, user, realm, password)
}

// DigestResponse is the digest response with qop "auth" (RFC 7616):
// H(ha1:nonce:nc:cnonce:qop:H(method:uri)). In-frame RPC auth uses method
// "dummy_method", uri "dummy_uri" and nc "1"; HTTP uses the request's.
func DigestResponse(alg, ha1, nonce, nc, cnonce, qop, method, uri string) string {
	newHash, err := DigestHash(alg)
	if err != nil {
		newHash = md5.New
	}
	return DigestHex(newHash, ha1, nonce, nc, cnonce, qop, DigestHex(newHash, method, uri))
}

// NewCNonce returns a random client nonce: a number below 2^31, as mos
// sends them (a device reads it as text either way).
func NewCNonce() int64 {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return int64(binary.BigEndian.Uint64(b[:]) >> 33)
}

// DigestChallenge is a parsed "WWW-Authenticate: Digest …" header.
type DigestChallenge struct {
	Realm, Nonce, QOP, Algorithm, Opaque string
}

// ParseDigestChallenge parses a WWW-Authenticate value. It fails when the
// scheme is not Digest, a parameter cannot be read, the nonce is missing,
// the algorithm is not MD5 or SHA-256, or qop does not offer "auth".
func ParseDigestChallenge(header string) (*DigestChallenge, error) {
	scheme, rest, _ := strings.Cut(strings.TrimSpace(header), " ")
	if !strings.EqualFold(scheme, "Digest") {
		return nil, fmt.Errorf("authentication scheme %q is not Digest", scheme)
	}
	params, err := ParseAuthParams(rest)
	if err != nil {
		return nil, err
	}
	ch := &DigestChallenge{Realm: params["realm"], Nonce: params["nonce"], QOP: params["qop"],
		Algorithm: params["algorithm"], Opaque: params["opaque"]}
	if ch.Nonce == "" {
		return nil, fmt.Errorf("the Digest challenge has no nonce")
	}
	if _, err := DigestHash(ch.Algorithm); err != nil {
		return nil, err
	}
	if ch.QOP != "" {
		ok := false
		for q := range strings.SplitSeq(ch.QOP, ",") {
			if strings.EqualFold(strings.TrimSpace(q), "auth") {
				ok = true
			}
		}
		if !ok {
			return nil, fmt.Errorf("the Digest challenge offers qop %q, not \"auth\"", ch.QOP)
		}
	}
	return ch, nil
}

// Authorization returns the value of an "Authorization: Digest …" header
// answering ch for a request with this method and uri, with nc 00000001
// and a new cnonce, as mos sends it.
func (ch *DigestChallenge) Authorization(creds *Credentials, method, uri string) string {
	alg := ch.Algorithm
	if alg == "" {
		alg = DigestMD5
	}
	cnonce := strconv.FormatInt(NewCNonce(), 10)
	const nc = "00000001"
	qop := ""
	if ch.QOP != "" {
		qop = "auth"
	}
	ha1 := DigestHA1(alg, creds.User, ch.Realm, creds.Password)
	var resp string
	if qop == "" {
		// RFC 2069 form: H(ha1:nonce:H(method:uri)).
		newHash, _ := DigestHash(alg)
		resp = DigestHex(newHash, ha1, ch.Nonce, DigestHex(newHash, method, uri))
	} else {
		resp = DigestResponse(alg, ha1, ch.Nonce, nc, cnonce, qop, method, uri)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `Digest username=%s, realm=%s, uri=%s, algorithm=%s, nonce=%s`,
		quoteParam(creds.User), quoteParam(ch.Realm), quoteParam(uri), alg, quoteParam(ch.Nonce))
	if qop != "" {
		fmt.Fprintf(&b, `, nc=%s, cnonce=%s, qop=%s`, nc, quoteParam(cnonce), qop)
	}
	fmt.Fprintf(&b, `, response=%s`, quoteParam(resp))
	if ch.Opaque != "" {
		fmt.Fprintf(&b, `, opaque=%s`, quoteParam(ch.Opaque))
	}
	return b.String()
}

func quoteParam(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// ParseAuthParams parses the comma-separated key=value list of a Digest
// challenge or Authorization header (after the scheme): values are tokens
// or quoted strings with backslash escapes. Keys are returned in lower
// case; the first of a repeated key wins.
func ParseAuthParams(s string) (map[string]string, error) {
	out := map[string]string{}
	i := 0
	skipSpace := func() {
		for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == ',') {
			i++
		}
	}
	for {
		skipSpace()
		if i >= len(s) {
			return out, nil
		}
		start := i
		for i < len(s) && s[i] != '=' && s[i] != ',' && s[i] != ' ' && s[i] != '\t' {
			i++
		}
		key := strings.ToLower(s[start:i])
		for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
			i++
		}
		if key == "" || i >= len(s) || s[i] != '=' {
			return nil, fmt.Errorf("malformed authentication parameters near %q", cut(s[start:], 20))
		}
		i++
		for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
			i++
		}
		var val string
		if i < len(s) && s[i] == '"' {
			i++
			var b strings.Builder
			closed := false
			for i < len(s) {
				c := s[i]
				i++
				if c == '\\' && i < len(s) {
					b.WriteByte(s[i])
					i++
					continue
				}
				if c == '"' {
					closed = true
					break
				}
				b.WriteByte(c)
			}
			if !closed {
				return nil, fmt.Errorf("unterminated quoted value for %q", key)
			}
			val = b.String()
		} else {
			vs := i
			for i < len(s) && s[i] != ',' && s[i] != ' ' && s[i] != '\t' {
				i++
			}
			val = s[vs:i]
		}
		if _, dup := out[key]; !dup {
			out[key] = val
		}
	}
}

func cut(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
