package emulator

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
)

// DefaultAuthDomain is a device's default rpc.auth_domain (the realm).
const DefaultAuthDomain = "RPC"

// DefaultNonceValidity is how long a device takes a nonce: an answer to a
// challenge whose nonce is older is treated as no answer.
const DefaultNonceValidity = time.Hour

// AuthConfig is the device's RPC authentication and access control, as a
// Mongoose OS device's rpc.auth_domain, rpc.auth_file, rpc.auth_algo and
// rpc.acl settings (docs/security.md).
type AuthConfig struct {
	// Domain is rpc.auth_domain, the realm. Default "RPC".
	Domain string
	// File is rpc.auth_file: an htdigest file of user:realm:HA1 lines.
	// It is read at every check, as on a device. Empty: no one can
	// authenticate.
	File string
	// Algo is rpc.auth_algo: "MD5" (0, the default) or "SHA-256" (1),
	// the hash of the file and of digest answers.
	Algo string
	// ACL is rpc.acl: a JSON array of {"method", "ch_type", "acl"}
	// entries, or "@FILE" holding one. Empty: every call is allowed (with
	// or without an auth file, as on a device).
	ACL string
	// NonceValidity is how long a nonce is accepted. Default an hour;
	// tests shorten it.
	NonceValidity time.Duration
	// OnEvent, when set, is told about every decision (tests).
	OnEvent func(AuthEvent)
}

// AuthEvent is one access decision of the emulated device.
type AuthEvent struct {
	Method  string
	Channel string // HTTP, WS_in, UART, MQTT, or "" for an in-process pipe
	// User is the authenticated user, or the one whose answer failed.
	User string
	// Outcome: "allowed" (the ACL needs no user), "authenticated" (a user
	// the ACL allows), "forbidden" (403), "challenged" (401),
	// "bad_request" (400).
	Outcome string
	// Why, for a challenge after a failed answer: "stale_nonce",
	// "wrong_password", "unknown_user"; empty otherwise.
	Why string
}

// aclEntry is one entry of rpc.acl.
type aclEntry struct {
	method string // glob; empty matches every method
	chType string // empty matches every channel
	hasCh  bool
	acl    string
}

// deviceAuth checks calls as a device's RPC layer does (rpc-common's
// request pre-handler; docs/security.md).
type deviceAuth struct {
	domain, file, algo string
	validity           time.Duration
	acl                []aclEntry
	hasACL             bool
	clock              Clock
	log                logger
	onEvent            func(AuthEvent)
}

// logger is the part of *slog.Logger the checks use.
type logger interface {
	Info(msg string, args ...any)
	Warn(msg string, args ...any)
}

// newDeviceAuth validates c. A malformed ACL, an unreadable auth file or
// an unknown algorithm are errors: a device would drop every call (or some
// entries) without a word, which no one wants to rehearse.
func newDeviceAuth(c *AuthConfig, clock Clock, log logger) (*deviceAuth, error) {
	a := &deviceAuth{domain: c.Domain, file: c.File, validity: c.NonceValidity, clock: clock, log: log, onEvent: c.OnEvent}
	if a.domain == "" {
		a.domain = DefaultAuthDomain
	}
	if a.validity <= 0 {
		a.validity = DefaultNonceValidity
	}
	switch strings.ToUpper(strings.ReplaceAll(c.Algo, "-", "")) {
	case "", "MD5", "0":
		a.algo = transport.DigestMD5
	case "SHA256", "1":
		a.algo = transport.DigestSHA256
	default:
		return nil, fmt.Errorf("emulator: auth algorithm %q: want md5 or sha256 (rpc.auth_algo 0 or 1)", c.Algo)
	}
	if a.file != "" {
		users, err := readHTDigest(a.file)
		if err != nil {
			return nil, fmt.Errorf("emulator: auth file: %w", err)
		}
		inRealm := 0
		for _, u := range users {
			if u.realm == a.domain {
				inRealm++
			}
		}
		if inRealm == 0 {
			log.Warn(fmt.Sprintf("auth file %s has no user in realm %q: no one can authenticate", a.file, a.domain))
		}
	}
	if c.ACL != "" {
		text := []byte(c.ACL)
		if strings.HasPrefix(c.ACL, "@") {
			b, err := os.ReadFile(c.ACL[1:])
			if err != nil {
				return nil, fmt.Errorf("emulator: ACL file: %w", err)
			}
			text = b
		}
		acl, err := parseACL(text)
		if err != nil {
			return nil, fmt.Errorf("emulator: ACL: %w", err)
		}
		a.acl, a.hasACL = acl, true
		if a.file == "" {
			for _, e := range acl {
				if e.acl != "*" && e.acl != "+*" && e.acl != "-*" {
					log.Warn("the ACL names users but there is no auth file: no one can authenticate, calls that need a user get 401")
					break
				}
			}
		}
	}
	return a, nil
}

// parseACL reads rpc.acl: a JSON array of objects with "method" (a glob),
// "ch_type" and "acl" (a user list) members.
func parseACL(text []byte) ([]aclEntry, error) {
	var raw []json.RawMessage
	if err := json.Unmarshal(text, &raw); err != nil {
		return nil, fmt.Errorf("not a JSON array of entries: %v (example: [{\"method\": \"OTA.*\", \"acl\": \"+admin\"}, {\"method\": \"*\", \"acl\": \"*\"}])", err)
	}
	out := make([]aclEntry, 0, len(raw))
	for i, r := range raw {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(r, &m); err != nil {
			return nil, fmt.Errorf("entry %d is not an object: %s", i+1, r)
		}
		var e aclEntry
		e.method = tokenText(m["method"])
		if ch, ok := m["ch_type"]; ok {
			var s string
			if json.Unmarshal(ch, &s) != nil {
				return nil, fmt.Errorf("entry %d: ch_type must be a string (HTTP, WS_in, UART, MQTT)", i+1)
			}
			e.chType, e.hasCh = s, true
		}
		e.acl = tokenText(m["acl"])
		if e.acl == "" {
			return nil, fmt.Errorf("entry %d has no \"acl\" (a device ignores such an entry): %s", i+1, r)
		}
		if e.method == "" && !e.hasCh {
			return nil, fmt.Errorf("entry %d has neither \"method\" nor \"ch_type\" (a device ignores such an entry): %s", i+1, r)
		}
		out = append(out, e)
	}
	return out, nil
}

// tokenText is a JSON token as a device's scanner hands it over: a
// string's contents, any other value's text; "" when absent.
func tokenText(r json.RawMessage) string {
	r = bytes.TrimSpace(r)
	if len(r) == 0 || string(r) == "null" {
		return ""
	}
	if r[0] == '"' {
		var s string
		if json.Unmarshal(r, &s) == nil {
			return s
		}
	}
	return string(r)
}

// htUser is one line of an htdigest file.
type htUser struct{ user, realm, ha1 string }

// readHTDigest reads user:realm:HA1 lines; other lines are skipped, as a
// device's sscanf skips them.
func readHTDigest(path string) ([]htUser, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []htUser
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		user, rest, ok1 := strings.Cut(line, ":")
		realm, ha1, ok2 := strings.Cut(rest, ":")
		ha1 = strings.TrimSpace(ha1)
		if i := strings.IndexAny(ha1, " \t"); i >= 0 {
			ha1 = ha1[:i]
		}
		if !ok1 || !ok2 || user == "" || realm == "" || ha1 == "" {
			continue
		}
		out = append(out, htUser{user, realm, ha1})
	}
	return out, sc.Err()
}

// lookup returns the HA1 of the first line for user in the device's realm.
func (a *deviceAuth) lookup(user string) (string, bool) {
	users, err := readHTDigest(a.file)
	if err != nil {
		a.log.Warn("cannot read the auth file", "err", err)
		return "", false
	}
	for _, u := range users {
		if u.user == user && u.realm == a.domain {
			return u.ha1, true
		}
	}
	return "", false
}

// authorize finds the ACL entry for method on chType: allow, deny, or the
// user list to check a user against.
func (a *deviceAuth) authorize(method, chType string) (verdict int, users string) {
	if !a.hasACL {
		return aclAllow, ""
	}
	for _, e := range a.acl {
		if e.hasCh && e.chType != chType {
			continue
		}
		if e.method != "" && !globMatch(e.method, method) {
			continue
		}
		switch e.acl {
		case "*", "+*":
			return aclAllow, ""
		case "-*":
			return aclDeny, ""
		}
		return aclUsers, e.acl
	}
	return aclDeny, "" // no matching entry
}

const (
	aclAllow = iota
	aclDeny
	aclUsers
)

// check is the access check a device runs before each known method
// (rpc-common's pre-handler): the ACL entry for the method and channel
// first; then, if it names users, the in-frame "auth", else the channel's
// own authentication (HTTP Authorization header, WebSocket handshake);
// then the user against the entry.
func (a *deviceAuth) check(ctx context.Context, req *rpc.Request) *frame.Error {
	ch := transport.ChannelFrom(ctx)
	chType := ""
	if ch != nil {
		chType = ch.Type
	}
	ev := AuthEvent{Method: req.Method, Channel: chType}
	verdict, users := a.authorize(req.Method, chType)
	switch verdict {
	case aclAllow:
		ev.Outcome = "allowed"
		a.event(ev)
		return nil
	case aclDeny:
		ev.Outcome = "forbidden"
		a.event(ev)
		return &frame.Error{Code: 403, Message: "unauthorized"}
	}
	var user string
	if a.file != "" {
		u, why, ok := a.frameUser(req.Frame.AuthRaw)
		if !ok {
			ev.Outcome, ev.Why = "bad_request", why
			a.event(ev)
			return &frame.Error{Code: 400, Message: "bad request"}
		}
		user = u
		if user == "" && why != "" {
			ev.Why, ev.User = why, authUserName(req.Frame.AuthRaw)
		}
	}
	if user == "" && ch != nil {
		switch ch.Type {
		case transport.ChannelHTTP:
			u, why := a.httpUser(ch.HTTPMethod, ch.HTTPURI, ch.Authorization, a.algo)
			user = u
			if user == "" && why != "" && ev.Why == "" {
				ev.Why, ev.User = why, headerUserName(ch.Authorization)
			}
		case transport.ChannelWS:
			user = ch.User
		}
	}
	if user == "" {
		ev.Outcome = "challenged"
		a.event(ev)
		return a.challenge(ch)
	}
	ev.User = user
	if !checkAccess(user, users) {
		ev.Outcome = "forbidden"
		a.event(ev)
		return &frame.Error{Code: 403, Message: "unauthorized"}
	}
	ev.Outcome = "authenticated"
	a.event(ev)
	return nil
}

func (a *deviceAuth) event(ev AuthEvent) {
	switch ev.Outcome {
	case "forbidden":
		a.log.Warn("RPC call refused by the ACL", "method", ev.Method, "channel", ev.Channel, "user", ev.User)
	case "bad_request":
		a.log.Warn("RPC call with an unusable auth object", "method", ev.Method, "channel", ev.Channel, "why", ev.Why)
	case "challenged":
		if ev.Why != "" {
			a.log.Warn("RPC authentication failed", "method", ev.Method, "channel", ev.Channel, "user", ev.User, "why", ev.Why)
		}
	}
	if a.onEvent != nil {
		a.onEvent(ev)
	}
}

// challenge is the answer to a call that needs a user when none was
// established: a real 401 on an HTTP channel, an error frame with code 401
// elsewhere. The nonce is the device's clock in seconds.
func (a *deviceAuth) challenge(ch *transport.Channel) *frame.Error {
	now := a.clock.Now().Unix()
	if ch.Challenge(fmt.Sprintf(`Digest qop="auth", realm="%s", nonce="%x", algorithm=%s`, a.domain, now, a.algo)) {
		return &frame.Error{Code: 401, Message: "Unauthorized"} // the HTTP handler answers 401 instead
	}
	return &frame.Error{Code: 401, Message: fmt.Sprintf(`{"auth_type": "digest", "nonce": %d, "nc": 1, "realm": %s, "algorithm": %s}`,
		now, jsonString(a.domain), jsonString(a.algo))}
}

func jsonString(s string) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	return strings.TrimSuffix(buf.String(), "\n")
}

// frameUser checks an in-frame "auth" object (raw; nil when absent) as a
// device does. ok is false when the object is unusable (a device answers
// 400 "bad request"): a field missing or empty, an unknown algorithm, or
// a realm or algorithm other than the device's. user is empty when there
// is no object, or its answer failed (why says how).
func (a *deviceAuth) frameUser(raw json.RawMessage) (user, why string, ok bool) {
	if len(raw) == 0 {
		return "", "", true
	}
	var m map[string]json.RawMessage
	_ = json.Unmarshal(raw, &m) // not an object: every field is missing
	realm, username := tokenText(m["realm"]), tokenText(m["username"])
	nonce, cnonce := tokenText(m["nonce"]), tokenText(m["cnonce"])
	response, alg := tokenText(m["response"]), tokenText(m["algorithm"])
	if realm == "" || username == "" || nonce == "" || cnonce == "" || response == "" {
		return "", "a field of the auth object is missing", false
	}
	switch alg {
	case "":
		alg = transport.DigestMD5
	case transport.DigestMD5, transport.DigestSHA256:
	default:
		return "", fmt.Sprintf("unknown algorithm %q", alg), false
	}
	if alg != a.algo {
		return "", fmt.Sprintf("algorithm %s, not the device's %s", alg, a.algo), false
	}
	if realm != a.domain {
		return "", fmt.Sprintf("realm %q, not the device's %q", realm, a.domain), false
	}
	if !a.fresh(leadingUint(nonce, 10)) {
		return "", "stale_nonce", true
	}
	ha1, known := a.lookup(username)
	if !known {
		return "", "unknown_user", true
	}
	if !strings.EqualFold(response, rpc.InFrameResponse(alg, ha1, nonce, cnonce)) {
		return "", "wrong_password", true
	}
	return username, "", true
}

// fresh reports whether a nonce (seconds of the device's clock) is at
// most the validity old and not from the future.
func (a *deviceAuth) fresh(nonce uint64) bool {
	now := a.clock.Now().Unix()
	if now < 0 || uint64(now) < nonce {
		return false
	}
	return time.Duration(uint64(now)-nonce)*time.Second < a.validity
}

// httpUser checks an HTTP "Authorization: Digest …" header as a device's
// HTTP server does (mongoose): the nonce is hex seconds, HA2 hashes the
// request's method and URI, the realm is the device's (the header's is not
// compared), and the algorithm named, if any, must be alg.
func (a *deviceAuth) httpUser(method, uri, header, alg string) (user, why string) {
	if header == "" || a.file == "" {
		return "", ""
	}
	_, rest, _ := strings.Cut(strings.TrimSpace(header), " ")
	p, err := transport.ParseAuthParams(rest)
	if err != nil {
		return "", "bad_header"
	}
	for _, k := range []string{"username", "cnonce", "response", "uri", "qop", "nc", "nonce"} {
		if p[k] == "" {
			return "", "bad_header"
		}
	}
	if got := p["algorithm"]; got != "" && got != alg {
		return "", "wrong_algorithm"
	}
	if !a.fresh(leadingUint(p["nonce"], 16)) {
		return "", "stale_nonce"
	}
	ha1, known := a.lookup(p["username"])
	if !known {
		return "", "unknown_user"
	}
	want := transport.DigestResponse(alg, ha1, p["nonce"], p["nc"], p["cnonce"], p["qop"], method, uri)
	if !strings.EqualFold(p["response"], want) {
		return "", "wrong_password"
	}
	return p["username"], ""
}

// leadingUint reads the leading digits of s in base 10 or 16, as C's
// strtoul does (0 when there are none; saturating).
func leadingUint(s string, base uint64) uint64 {
	s = strings.TrimLeft(s, " \t\n\r\v\f")
	s = strings.TrimPrefix(s, "+")
	if base == 16 {
		if len(s) > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X') {
			s = s[2:]
		}
	}
	var v uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		var d uint64
		switch {
		case c >= '0' && c <= '9':
			d = uint64(c - '0')
		case base == 16 && c >= 'a' && c <= 'f':
			d = uint64(c-'a') + 10
		case base == 16 && c >= 'A' && c <= 'F':
			d = uint64(c-'A') + 10
		default:
			return v
		}
		if v > (^uint64(0)-d)/base {
			return ^uint64(0)
		}
		v = v*base + d
	}
	return v
}

func authUserName(raw json.RawMessage) string {
	var m map[string]json.RawMessage
	_ = json.Unmarshal(raw, &m)
	return tokenText(m["username"])
}

func headerUserName(header string) string {
	_, rest, _ := strings.Cut(strings.TrimSpace(header), " ")
	p, _ := transport.ParseAuthParams(rest)
	return p["username"]
}

// AuthenticateHandshake checks a WebSocket handshake's Authorization
// header as a device does: with MD5 whatever rpc.auth_algo says (the
// device's check of the handshake passes no algorithm), against the same
// auth file. A failed check does not refuse the connection; its calls are
// then challenged in-frame.
func (a *deviceAuth) AuthenticateHandshake(method, uri, header string) string {
	user, why := a.httpUser(method, uri, header, transport.DigestMD5)
	if user == "" && why != "" {
		a.log.Warn("WebSocket handshake authentication failed", "user", headerUserName(header), "why", why)
	}
	return user
}

// checkAccess matches user against a comma list of +glob / -glob entries
// (no sign means +): the first entry that matches decides; none denies.
func checkAccess(user, list string) bool {
	for e := range strings.SplitSeq(list, ",") {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		allow := e[0] != '-'
		if e[0] == '-' || e[0] == '+' {
			e = e[1:]
		}
		if e != "" && globMatch(e, user) {
			return allow
		}
	}
	return false
}

// globMatch matches s against a device glob (mongoose's mg_match_prefix,
// whole string): '?' is any one character, '*' any run without '/', '**'
// any run, a final '$' anchors (the match is whole anyway), letters match
// regardless of case, and '|' or ',' separate alternatives.
func globMatch(pattern, s string) bool {
	if i := strings.IndexAny(pattern, "|"); i >= 0 {
		return globMatch(pattern[:i], s) || globMatch(pattern[i+1:], s)
	}
	if i := strings.IndexByte(pattern, ','); i >= 0 {
		return globMatch(pattern[:i], s) || globMatch(pattern[i+1:], s)
	}
	pattern = strings.TrimSuffix(pattern, "$")
	return globHere(pattern, s)
}

func globHere(p, s string) bool {
	for len(p) > 0 {
		switch p[0] {
		case '?':
			if s == "" {
				return false
			}
			p, s = p[1:], s[1:]
		case '*':
			deep := strings.HasPrefix(p, "**")
			if deep {
				p = p[2:]
			} else {
				p = p[1:]
			}
			// Longest run first, as the device tries it.
			n := len(s)
			if !deep {
				if i := strings.IndexByte(s, '/'); i >= 0 {
					n = i
				}
			}
			for k := n; k >= 0; k-- {
				if globHere(p, s[k:]) {
					return true
				}
			}
			return false
		default:
			if s == "" || lower(p[0]) != lower(s[0]) {
				return false
			}
			p, s = p[1:], s[1:]
		}
	}
	return s == ""
}

func lower(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// deviceHandler is what the device's transports serve: its frames, and
// the WebSocket handshake check (transport.HandshakeAuthenticator).
type deviceHandler struct{ d *Device }

func (h deviceHandler) HandleFrame(ctx context.Context, f *frame.Frame) *frame.Frame {
	return h.d.handleFrame(ctx, f)
}

func (h deviceHandler) AuthenticateHandshake(method, uri, authorization string) string {
	if h.d.auth == nil {
		return ""
	}
	return h.d.auth.AuthenticateHandshake(method, uri, authorization)
}

// gate runs before every known method: the pre-reboot lockout, then the
// access check, in a device's order.
func (d *Device) gate(ctx context.Context, req *rpc.Request) *frame.Error {
	if e := d.lockout(ctx, req); e != nil {
		return e
	}
	if d.auth != nil {
		return d.auth.check(ctx, req)
	}
	return nil
}

// errNoAuth is returned by HTDigestLine for an empty user or realm.
var errNoAuth = errors.New("user and realm must not be empty or contain ':'")

// HTDigestLine returns the auth file line for user in realm with
// password, hashed with alg ("MD5" or "SHA-256"): what `htdigest` writes
// (for MD5), and what a device's rpc.auth_file holds.
func HTDigestLine(alg, user, realm, password string) (string, error) {
	if user == "" || realm == "" || strings.ContainsAny(user+realm, ":\n") {
		return "", errNoAuth
	}
	if _, err := transport.DigestHash(alg); err != nil {
		return "", err
	}
	return user + ":" + realm + ":" + transport.DigestHA1(alg, user, realm, password), nil
}
