package ws

import (
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/transporttest"
)

// digestGate answers a handshake without a valid HTTP digest for
// admin:pw with 401 and a challenge, as an HTTP server that protects /rpc
// does; it counts the handshakes it saw.
func digestGate(next http.Handler, seen *atomic.Int32) http.Handler {
	const realm, nonce = "RPC", "65f1a2b3"
	ha1 := transport.DigestHA1("SHA-256", "admin", realm, "pw")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		_, rest, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		p, _ := transport.ParseAuthParams(rest)
		want := transport.DigestResponse("SHA-256", ha1, nonce, p["nc"], p["cnonce"], p["qop"], r.Method, r.URL.RequestURI())
		if p["username"] != "admin" || p["nonce"] != nonce || p["response"] != want {
			w.Header().Set("WWW-Authenticate", `Digest qop="auth", realm="`+realm+`", nonce="`+nonce+`", algorithm=SHA-256`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// A handshake answered 401 with a Digest challenge is answered with
// --rpc-creds (method GET, the request's URI); refused credentials and
// missing ones are *transport.AuthError naming the user, never the
// password.
func TestHandshakeDigest(t *testing.T) {
	transporttest.LeakCheck(t)
	var seen atomic.Int32
	srv := quietServer(digestGate(NewHandler(transporttest.NewEchoDevice(), transport.Options{}), &seen), false)
	t.Cleanup(srv.Close)
	u := transporttest.MustParseURL(t, wsURL(srv)+"/rpc")

	c, err := Dial(transporttest.Ctx(t), u, transport.Options{Creds: &transport.Credentials{User: "admin", Password: "pw"}})
	if err != nil {
		t.Fatalf("Dial with the right credentials: %v", err)
	}
	if got := c.(transport.AuthenticatedConn).AuthenticatedUser(); got != "admin" {
		t.Errorf("AuthenticatedUser = %q", got)
	}
	c.Close()
	if n := seen.Load(); n != 2 {
		t.Errorf("%d handshakes, want 2 (challenge, answer)", n)
	}

	for _, tc := range []struct {
		name  string
		creds *transport.Credentials
		kind  transport.AuthKind
		want  string
	}{
		{"none", nil, transport.AuthRequired, "requires authentication (WebSocket handshake, HTTP digest, realm \"RPC\")"},
		{"wrong", &transport.Credentials{User: "admin", Password: "H1dden-guess"}, transport.AuthRefused, `refused user "admin"`},
	} {
		_, err := Dial(transporttest.Ctx(t), u, transport.Options{Creds: tc.creds})
		var ae *transport.AuthError
		if !errors.As(err, &ae) || ae.Kind != tc.kind || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v", tc.name, err)
		}
		if err != nil && strings.Contains(err.Error(), "H1dden-guess") {
			t.Errorf("%s: the password is in the error: %v", tc.name, err)
		}
	}
}
