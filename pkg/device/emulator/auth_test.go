package emulator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/pipe"
	"github.com/otactl/otactl/pkg/transport/ws"
)

func TestGlobMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, s string
		want       bool
	}{
		{"*", "OTA.Update", true},
		{"OTA.*", "OTA.Update", true},
		{"OTA.*", "Sys.Reboot", false},
		{"ota.update", "OTA.Update", true}, // letters match regardless of case
		{"OTA", "OTA.Update", false},       // the whole method must match
		{"OTA.Update", "OTA.Update.x", false},
		{"OTA.?pdate", "OTA.Update", true},
		{"OTA.Get*", "OTA.GetBootState", true},
		{"*State", "OTA.GetBootState", true},
		{"*", "a/b", false}, // '*' stops at '/'
		{"**", "a/b", true},
		{"a/*", "a/b", true},
		{"OTA.Commit|OTA.Revert", "OTA.Revert", true},
		{"OTA.Commit,OTA.Revert", "OTA.Commit", true},
		{"OTA.Commit,OTA.Revert", "OTA.Update", false},
		{"Sys.*$", "Sys.GetInfo", true},
		{"a*b*c", "aXbYc", true},
		{"a*b*c", "aXbY", false},
		{"admin", "admin", true},
		{"adm*", "admin", true},
		{"", "x", false},
	} {
		if got := globMatch(tc.pattern, tc.s); got != tc.want {
			t.Errorf("globMatch(%q, %q) = %v, want %v", tc.pattern, tc.s, got, tc.want)
		}
	}
}

func TestCheckAccess(t *testing.T) {
	for _, tc := range []struct {
		user, list string
		want       bool
	}{
		{"admin", "+admin", true},
		{"admin", "admin", true},
		{"bob", "+admin", false}, // default deny
		{"bob", "-bob,+*", false},
		{"alice", "-bob,+*", true},
		{"bob", "+*,-bob", true}, // the first match decides
		{"ops1", "+ops*", true},
		{"ops1", " +admin , +ops? ", true},
		{"x", "", false},
	} {
		if got := checkAccess(tc.user, tc.list); got != tc.want {
			t.Errorf("checkAccess(%q, %q) = %v, want %v", tc.user, tc.list, got, tc.want)
		}
	}
}

func TestACLRefusedAtStart(t *testing.T) {
	dir := t.TempDir()
	for _, acl := range []string{
		`{"method": "*", "acl": "*"}`,
		`[1]`,
		`[{"method": "*"}]`,
		`[{"acl": "+admin"}]`,
		`[{"method": "*", "ch_type": 5, "acl": "*"}]`,
		`@` + filepath.Join(dir, "missing.json"),
	} {
		_, err := New(Config{StateDir: filepath.Join(dir, "s"), Auth: &AuthConfig{ACL: acl}})
		if err == nil || !strings.Contains(err.Error(), "ACL") {
			t.Errorf("ACL %s: New = %v, want an ACL error", acl, err)
		}
	}
	if _, err := New(Config{StateDir: filepath.Join(dir, "s"), Auth: &AuthConfig{Algo: "sha1"}}); err == nil {
		t.Error("algorithm sha1 accepted")
	}
	if _, err := New(Config{StateDir: filepath.Join(dir, "s"), Auth: &AuthConfig{File: filepath.Join(dir, "none")}}); err == nil {
		t.Error("a missing auth file accepted")
	}
}

// authEnv is a device with users admin (may do anything), viewer (may
// read) and bob (in the file, in no ACL entry), over every channel.
type authEnv struct {
	*env
	mu     sync.Mutex
	events []AuthEvent
}

const (
	adminPass  = "Adm1n-S3cret"
	viewerPass = "v1ewer-pw"
	bobPass    = "b0b-pw"
)

func writeAuthFile(t *testing.T, alg, realm string) string {
	t.Helper()
	var lines []string
	for _, u := range [][2]string{{"admin", adminPass}, {"viewer", viewerPass}, {"bob", bobPass}} {
		l, err := HTDigestLine(alg, u[0], realm, u[1])
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, l)
	}
	// A line of another realm for admin, with another password, and junk.
	other, _ := HTDigestLine(alg, "admin", "other", "not-this")
	lines = append([]string{"# comment", other}, lines...)
	p := filepath.Join(t.TempDir(), "htdigest")
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const testACL = `[
  {"method": "Sys.GetInfo", "acl": "*"},
  {"method": "RPC.List", "ch_type": "UART", "acl": "*"},
  {"method": "RPC.List", "acl": "-*"},
  {"method": "OTA.Get*,OTA.Status", "acl": "+viewer,+admin"},
  {"method": "OTA.*", "acl": "+admin"}
]`

func newAuthEnv(t *testing.T, alg string, mod func(*Config)) *authEnv {
	t.Helper()
	ae := &authEnv{}
	file := writeAuthFile(t, alg, "RPC")
	ae.env = newEnv(t, func(c *Config) {
		c.Auth = &AuthConfig{File: file, Algo: alg, ACL: testACL, OnEvent: func(ev AuthEvent) {
			ae.mu.Lock()
			ae.events = append(ae.events, ev)
			ae.mu.Unlock()
		}}
		if mod != nil {
			mod(c)
		}
	})
	return ae
}

func (ae *authEnv) lastEvent() AuthEvent {
	ae.mu.Lock()
	defer ae.mu.Unlock()
	if len(ae.events) == 0 {
		return AuthEvent{}
	}
	return ae.events[len(ae.events)-1]
}

// raw sends a frame straight to the device's handler on a channel.
func (ae *authEnv) raw(ch *transport.Channel, f *frame.Frame) *frame.Frame {
	ae.t.Helper()
	ctx := context.Background()
	if ch != nil {
		ctx = transport.WithChannel(ctx, ch)
	}
	if f.ID == 0 {
		f.ID = rpc.NewID()
	}
	resp := ae.d.Handler().HandleFrame(ctx, f)
	if resp == nil {
		ae.t.Fatalf("no reply to %s", f.Method)
	}
	return resp
}

func wantCode(t *testing.T, resp *frame.Frame, code int, msg string) {
	t.Helper()
	if code == 0 {
		if resp.Error != nil && resp.Error.Code != 0 {
			t.Fatalf("want success, got error %d %q", resp.Error.Code, resp.Error.Message)
		}
		return
	}
	if resp.Error == nil || resp.Error.Code != code || (msg != "" && resp.Error.Message != msg) {
		t.Fatalf("want error %d %q, got %+v", code, msg, resp.Error)
	}
}

// challengeOf parses the 401 message, checking its exact form.
func challengeOf(t *testing.T, resp *frame.Frame, realm, alg string) int64 {
	t.Helper()
	wantCode(t, resp, 401, "")
	var ch struct {
		AuthType  string `json:"auth_type"`
		Nonce     int64  `json:"nonce"`
		NC        int    `json:"nc"`
		Realm     string `json:"realm"`
		Algorithm string `json:"algorithm"`
	}
	if err := json.Unmarshal([]byte(resp.Error.Message), &ch); err != nil {
		t.Fatalf("401 message %q: %v", resp.Error.Message, err)
	}
	want := fmt.Sprintf(`{"auth_type": "digest", "nonce": %d, "nc": 1, "realm": %q, "algorithm": %q}`, ch.Nonce, realm, alg)
	if resp.Error.Message != want {
		t.Fatalf("401 message\n %s\nwant\n %s", resp.Error.Message, want)
	}
	return ch.Nonce
}

func authFor(alg, user, pass, realm string, nonce int64) *frame.Auth {
	cn := int64(4242)
	return &frame.Auth{Realm: realm, Username: user, Nonce: nonce, CNonce: cn, Algorithm: alg,
		Response: rpc.DigestResponse(alg, user, realm, pass, nonce, cn)}
}

func withAuthRaw(f *frame.Frame, a *frame.Auth) *frame.Frame {
	f.Auth = a
	b, _ := json.Marshal(a)
	f.AuthRaw = b
	return f
}

func TestInFrameAuth(t *testing.T) {
	for _, alg := range []string{"MD5", "SHA-256"} {
		t.Run(alg, func(t *testing.T) {
			ae := newAuthEnv(t, alg, nil)
			uart := &transport.Channel{Type: transport.ChannelUART}
			call := func(method string, a *frame.Auth) *frame.Frame {
				f := &frame.Frame{Method: method}
				if a != nil {
					withAuthRaw(f, a)
				}
				return ae.raw(uart, f)
			}
			// Open to all, no auth needed.
			wantCode(t, call("Sys.GetInfo", nil), 0, "")
			// Open on UART only; closed on other channels for everyone.
			wantCode(t, call("RPC.List", nil), 0, "")
			wantCode(t, ae.raw(&transport.Channel{Type: transport.ChannelMQTT}, &frame.Frame{Method: "RPC.List"}), 403, "unauthorized")
			// No entry matches: 403 for everyone, before any auth.
			wantCode(t, call("Sys.Reboot", authFor(alg, "admin", adminPass, "RPC", ae.clock.Now().Unix())), 403, "unauthorized")

			nonce := challengeOf(t, call("OTA.GetBootState", nil), "RPC", alg)
			if nonce != ae.clock.Now().Unix() {
				t.Fatalf("nonce %d, want the device's clock %d", nonce, ae.clock.Now().Unix())
			}
			if ev := ae.lastEvent(); ev.Outcome != "challenged" || ev.Channel != "UART" {
				t.Fatalf("event %+v", ev)
			}
			wantCode(t, call("OTA.GetBootState", authFor(alg, "viewer", viewerPass, "RPC", nonce)), 0, "")
			wantCode(t, call("OTA.GetBootState", authFor(alg, "admin", adminPass, "RPC", nonce)), 0, "")
			// A known user the ACL denies: 403.
			wantCode(t, call("OTA.Commit", authFor(alg, "viewer", viewerPass, "RPC", nonce)), 403, "unauthorized")
			if ev := ae.lastEvent(); ev.Outcome != "forbidden" || ev.User != "viewer" {
				t.Fatalf("event %+v", ev)
			}
			wantCode(t, call("OTA.GetBootState", authFor(alg, "bob", bobPass, "RPC", nonce)), 403, "unauthorized")
			// Wrong password, unknown user: challenged again.
			challengeOf(t, call("OTA.GetBootState", authFor(alg, "admin", "guess", "RPC", nonce)), "RPC", alg)
			if ev := ae.lastEvent(); ev.Why != "wrong_password" || ev.User != "admin" {
				t.Fatalf("event %+v", ev)
			}
			challengeOf(t, call("OTA.GetBootState", authFor(alg, "mallory", "x", "RPC", nonce)), "RPC", alg)
			if ev := ae.lastEvent(); ev.Why != "unknown_user" {
				t.Fatalf("event %+v", ev)
			}
			// The other realm's line for admin is not used.
			challengeOf(t, call("OTA.GetBootState", authFor(alg, "admin", "not-this", "RPC", nonce)), "RPC", alg)

			// Malformed: 400 "bad request".
			other := "SHA-256"
			if alg == other {
				other = "MD5"
			}
			for name, a := range map[string]*frame.Auth{
				"other realm":     authFor(alg, "admin", adminPass, "other", nonce),
				"other algorithm": authFor(other, "admin", adminPass, "RPC", nonce),
				"no response":     {Realm: "RPC", Username: "admin", Nonce: nonce, CNonce: 1, Algorithm: alg},
				"no user":         {Realm: "RPC", Nonce: nonce, CNonce: 1, Algorithm: alg, Response: "00"},
			} {
				if resp := call("OTA.GetBootState", a); resp.Error == nil || resp.Error.Code != 400 || resp.Error.Message != "bad request" {
					t.Errorf("%s: %+v, want 400 bad request", name, resp.Error)
				}
			}
			bogus := withAuthRaw(&frame.Frame{Method: "OTA.GetBootState"}, authFor(alg, "admin", adminPass, "RPC", nonce))
			bogus.AuthRaw = json.RawMessage(`{"realm":"RPC","username":"admin","nonce":1,"cnonce":1,"response":"a","algorithm":"md5"}`)
			wantCode(t, ae.raw(uart, bogus), 400, "bad request") // names are exact
			if alg == "MD5" {
				// No algorithm means MD5.
				a := authFor(alg, "admin", adminPass, "RPC", nonce)
				a.Algorithm = ""
				wantCode(t, call("OTA.GetBootState", a), 0, "")
			}
			// Strings are read like numbers.
			a := authFor(alg, "admin", adminPass, "RPC", nonce)
			sf := &frame.Frame{Method: "OTA.GetBootState"}
			sf.AuthRaw = json.RawMessage(fmt.Sprintf(`{"realm":"RPC","username":"admin","nonce":"%d","cnonce":"%d","response":%q,"algorithm":%q}`,
				a.Nonce, a.CNonce, strings.ToUpper(a.Response), alg))
			wantCode(t, ae.raw(uart, sf), 0, "")

			// A captured answer replays for as long as its nonce is valid
			// (the protocol's weakness), and not a second longer.
			captured := authFor(alg, "admin", adminPass, "RPC", nonce)
			ae.clock.Advance(DefaultNonceValidity - time.Second)
			wantCode(t, call("OTA.GetBootState", captured), 0, "")
			ae.clock.Advance(time.Second)
			fresh := challengeOf(t, call("OTA.GetBootState", captured), "RPC", alg)
			if ev := ae.lastEvent(); ev.Why != "stale_nonce" {
				t.Fatalf("event %+v", ev)
			}
			if fresh != nonce+int64(DefaultNonceValidity/time.Second) {
				t.Fatalf("fresh nonce %d after %d", fresh, nonce)
			}
			wantCode(t, call("OTA.GetBootState", authFor(alg, "admin", adminPass, "RPC", fresh)), 0, "")
			// A nonce from the future is no better.
			wantCode(t, call("OTA.GetBootState", authFor(alg, "admin", adminPass, "RPC", fresh+10)), 401, "")
		})
	}
}

func TestShortNonceValidity(t *testing.T) {
	ae := newAuthEnv(t, "MD5", func(c *Config) { c.Auth.NonceValidity = 5 * time.Second })
	nonce := challengeOf(t, ae.raw(nil, &frame.Frame{Method: "OTA.Status"}), "RPC", "MD5")
	a := authFor("MD5", "admin", adminPass, "RPC", nonce)
	ae.clock.Advance(4 * time.Second)
	wantCode(t, ae.raw(nil, withAuthRaw(&frame.Frame{Method: "OTA.Status"}, a)), 0, "")
	ae.clock.Advance(time.Second)
	challengeOf(t, ae.raw(nil, withAuthRaw(&frame.Frame{Method: "OTA.Status"}, a)), "RPC", "MD5")
}

// Without an ACL every call is allowed, auth file or not, as on a device.
func TestNoACLAllowsAll(t *testing.T) {
	file := writeAuthFile(t, "MD5", "RPC")
	e := newEnv(t, func(c *Config) { c.Auth = &AuthConfig{File: file} })
	e.mustCall("OTA.GetBootState", nil)
}

// The rpc client answers the challenge and then answers up front.
func TestClientAgainstDevice(t *testing.T) {
	ae := newAuthEnv(t, "SHA-256", nil)
	c := newPipeClient(t, ae.env, &transport.Credentials{User: "admin", Password: adminPass})
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if _, err := c.Call(ctx, "OTA.GetBootState", nil); err != nil {
			t.Fatal(err)
		}
	}
	ae.mu.Lock()
	challenges := 0
	for _, ev := range ae.events {
		if ev.Outcome == "challenged" {
			challenges++
		}
	}
	ae.mu.Unlock()
	if challenges != 1 {
		t.Fatalf("%d challenges for 3 calls, want 1 (later calls answer up front)", challenges)
	}
	_, err := c.Call(ctx, "Sys.Reboot", nil)
	var ae2 *rpc.AuthError
	if !errors.As(err, &ae2) || ae2.Kind != transport.AuthForbidden {
		t.Fatalf("Sys.Reboot: %v", err)
	}
}

func newPipeClient(t *testing.T, e *env, creds *transport.Credentials) *rpc.Client {
	t.Helper()
	c := rpc.NewClient(pipe.New(e.d.Handler()), rpc.ClientOptions{Creds: creds})
	t.Cleanup(func() { c.Close() })
	return c
}

// Over HTTP: a real 401 with WWW-Authenticate, the Authorization header
// checked with the request's method and URI; in-frame auth works too.
func TestHTTPDigest(t *testing.T) {
	for _, alg := range []string{"MD5", "SHA-256"} {
		t.Run(alg, func(t *testing.T) {
			ae := newAuthEnv(t, alg, func(c *Config) { c.Listen = "127.0.0.1:0" })
			base := strings.TrimSuffix(ae.d.Listeners()[0].Addr, "/rpc")
			post := func(path, authz string, f *frame.Frame) *http.Response {
				t.Helper()
				if f.ID == 0 {
					f.ID = 7
				}
				b, _ := frame.Marshal(f)
				req, _ := http.NewRequest("POST", base+path, strings.NewReader(string(b)))
				if authz != "" {
					req.Header.Set("Authorization", authz)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { resp.Body.Close() })
				return resp
			}
			resp := post("/rpc", "", &frame.Frame{Method: "OTA.GetBootState"})
			if resp.StatusCode != 401 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			now := ae.clock.Now().Unix()
			want := fmt.Sprintf(`Digest qop="auth", realm="RPC", nonce="%x", algorithm=%s`, now, alg)
			if got := resp.Header.Get("WWW-Authenticate"); got != want {
				t.Fatalf("WWW-Authenticate %q, want %q", got, want)
			}
			if resp.ContentLength != 0 || !resp.Close {
				t.Fatalf("401 with a body (%d) or a kept connection (%v)", resp.ContentLength, resp.Close)
			}
			ch, err := transport.ParseDigestChallenge(resp.Header.Get("WWW-Authenticate"))
			if err != nil {
				t.Fatal(err)
			}
			good := ch.Authorization(&transport.Credentials{User: "admin", Password: adminPass}, "POST", "/rpc")
			readFrame := func(resp *http.Response) *frame.Frame {
				t.Helper()
				if resp.StatusCode != 200 {
					t.Fatalf("status %d", resp.StatusCode)
				}
				b, _ := io.ReadAll(resp.Body)
				f, err := frame.Parse(b)
				if err != nil {
					t.Fatal(err)
				}
				return f
			}
			wantCode(t, readFrame(post("/rpc", good, &frame.Frame{Method: "OTA.GetBootState"})), 0, "")
			// The URI of the request counts, not the header's.
			wantCode(t, readFrame(post("/rpc/OTA.GetBootState", ch.Authorization(&transport.Credentials{User: "admin", Password: adminPass}, "POST", "/rpc/OTA.GetBootState"), &frame.Frame{})), 0, "")
			if r := post("/rpc/OTA.GetBootState", good, &frame.Frame{}); r.StatusCode != 401 {
				t.Fatalf("a digest for /rpc accepted on /rpc/OTA.GetBootState: %d", r.StatusCode)
			}
			// The ACL applies to the HTTP user too.
			viewer := ch.Authorization(&transport.Credentials{User: "viewer", Password: viewerPass}, "POST", "/rpc")
			wantCode(t, readFrame(post("/rpc", viewer, &frame.Frame{Method: "OTA.Commit"})), 403, "unauthorized")
			wrong := ch.Authorization(&transport.Credentials{User: "admin", Password: "nope"}, "POST", "/rpc")
			if r := post("/rpc", wrong, &frame.Frame{Method: "OTA.GetBootState"}); r.StatusCode != 401 {
				t.Fatalf("wrong password: %d", r.StatusCode)
			}
			if ev := ae.lastEvent(); ev.Why != "wrong_password" || ev.Channel != "HTTP" {
				t.Fatalf("event %+v", ev)
			}
			// In-frame auth over HTTP.
			f := withAuthRaw(&frame.Frame{Method: "OTA.GetBootState"}, authFor(alg, "admin", adminPass, "RPC", now))
			wantCode(t, readFrame(post("/rpc", "", f)), 0, "")
			// A captured header replays until its nonce is stale.
			ae.clock.Advance(DefaultNonceValidity)
			if r := post("/rpc", good, &frame.Frame{Method: "OTA.GetBootState"}); r.StatusCode != 401 {
				t.Fatalf("stale header accepted: %d", r.StatusCode)
			}
			if ev := ae.lastEvent(); ev.Why != "stale_nonce" {
				t.Fatalf("event %+v", ev)
			}
		})
	}
}

// Over WebSocket: the handshake's Authorization header establishes the
// user for the connection (MD5, as a device checks it); without one the
// calls are challenged in-frame. A bad header does not refuse the
// connection.
func TestWebSocketHandshakeAuth(t *testing.T) {
	ae := newAuthEnv(t, "MD5", func(c *Config) { c.Listen = "127.0.0.1:0" })
	var wsURL string
	for _, l := range ae.d.Listeners() {
		if l.Transport == "ws" {
			wsURL = l.Addr
		}
	}
	nonce := strconv.FormatInt(ae.clock.Now().Unix(), 16)
	ch := &transport.DigestChallenge{Realm: "RPC", Nonce: nonce, QOP: "auth", Algorithm: "MD5"}
	dial := func(authz string) *websocket.Conn {
		t.Helper()
		h := http.Header{}
		if authz != "" {
			h.Set("Authorization", authz)
		}
		d := websocket.Dialer{Subprotocols: []string{ws.Subprotocol}}
		c, resp, err := d.Dial(wsURL, h)
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		resp.Body.Close()
		t.Cleanup(func() { c.Close() })
		return c
	}
	call := func(c *websocket.Conn, method string) *frame.Frame {
		t.Helper()
		b, _ := frame.Marshal(&frame.Frame{ID: 9, Method: method})
		if err := c.WriteMessage(websocket.TextMessage, b); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(waitLimit))
		_, data, err := c.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		f, err := frame.Parse(data)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	admin := dial(ch.Authorization(&transport.Credentials{User: "admin", Password: adminPass}, "GET", "/rpc"))
	wantCode(t, call(admin, "OTA.GetBootState"), 0, "")
	wantCode(t, call(admin, "OTA.Commit"), -1, "") // allowed; the device has nothing to commit
	if ev := ae.lastEvent(); ev.Channel != "WS_in" || ev.User != "admin" || ev.Outcome != "authenticated" {
		t.Fatalf("event %+v", ev)
	}
	viewer := dial(ch.Authorization(&transport.Credentials{User: "viewer", Password: viewerPass}, "GET", "/rpc"))
	wantCode(t, call(viewer, "OTA.Commit"), 403, "unauthorized")
	bad := dial(ch.Authorization(&transport.Credentials{User: "admin", Password: "nope"}, "GET", "/rpc"))
	challengeOf(t, call(bad, "OTA.GetBootState"), "RPC", "MD5")
	anon := dial("")
	challengeOf(t, call(anon, "OTA.GetBootState"), "RPC", "MD5")
	// The handshake's user stays with the connection.
	ae.clock.Advance(2 * DefaultNonceValidity)
	wantCode(t, call(admin, "OTA.GetBootState"), 0, "")
}

// An HTTP request with an Authorization header of the wrong algorithm is
// not authenticated: a device configured for SHA-256 checks HTTP headers
// with SHA-256 only.
func TestHTTPDigestAlgorithmMustMatch(t *testing.T) {
	ae := newAuthEnv(t, "SHA-256", nil)
	nonce := strconv.FormatInt(ae.clock.Now().Unix(), 16)
	md5 := &transport.DigestChallenge{Realm: "RPC", Nonce: nonce, QOP: "auth", Algorithm: "MD5"}
	ch := &transport.Channel{Type: transport.ChannelHTTP, HTTPMethod: "POST", HTTPURI: "/rpc",
		Authorization: md5.Authorization(&transport.Credentials{User: "admin", Password: adminPass}, "POST", "/rpc")}
	ae.raw(ch, &frame.Frame{Method: "OTA.GetBootState"})
	if _, ok := ch.Challenged(); !ok {
		t.Fatal("an MD5 header was accepted by a SHA-256 device")
	}
}
