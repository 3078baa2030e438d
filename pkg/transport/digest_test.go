package transport

import (
	"strings"
	"testing"
)

// RFC 7616 §3.9.1, the same request with MD5 and SHA-256.
func TestDigestResponseRFC7616(t *testing.T) {
	const (
		user, realm, pass = "Mufasa", "http-auth@example.org", "Circle of Life"
		nonce             = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
		cnonce            = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
	)
	for alg, want := range map[string]string{
		"MD5":     "8ca523f5e9506fed4657c9700eebdbec",
		"SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
	} {
		got := DigestResponse(alg, DigestHA1(alg, user, realm, pass), nonce, "00000001", cnonce, "auth", "GET", "/dir/index.html")
		if got != want {
			t.Errorf("%s: %s, want %s", alg, got, want)
		}
	}
}

func TestParseDigestChallenge(t *testing.T) {
	ch, err := ParseDigestChallenge(`Digest qop="auth", realm="RPC", nonce="65f1a2b3", algorithm=SHA-256`)
	if err != nil || ch.Realm != "RPC" || ch.Nonce != "65f1a2b3" || ch.Algorithm != "SHA-256" || ch.QOP != "auth" {
		t.Fatalf("%+v %v", ch, err)
	}
	ch, err = ParseDigestChallenge(`digest realm="a \"quoted\", realm",nonce=abc,qop="auth,auth-int",opaque="o"`)
	if err != nil || ch.Realm != `a "quoted", realm` || ch.Nonce != "abc" || ch.Opaque != "o" {
		t.Fatalf("%+v %v", ch, err)
	}
	for _, bad := range []string{
		`Basic realm="x"`,
		`Digest realm="RPC"`,
		`Digest nonce="1", algorithm=SHA-512`,
		`Digest nonce="1", qop="auth-int"`,
		`Digest nonce="1`,
		`Digest =x`,
	} {
		if _, err := ParseDigestChallenge(bad); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
}

// The Authorization header answers the challenge: a server recomputing
// the response from its parameters and the password gets the same.
func TestDigestAuthorizationRoundTrip(t *testing.T) {
	for _, alg := range []string{"", "MD5", "SHA-256"} {
		ch := &DigestChallenge{Realm: "RPC", Nonce: "65f1a2b3", QOP: "auth", Algorithm: alg, Opaque: "op"}
		h := ch.Authorization(&Credentials{User: `ad"min`, Password: "pw"}, "POST", "/rpc?x=1")
		scheme, rest, _ := strings.Cut(h, " ")
		p, err := ParseAuthParams(rest)
		if scheme != "Digest" || err != nil {
			t.Fatalf("%s: %v", h, err)
		}
		want := DigestResponse(alg, DigestHA1(alg, `ad"min`, "RPC", "pw"), "65f1a2b3", p["nc"], p["cnonce"], p["qop"], "POST", p["uri"])
		if p["username"] != `ad"min` || p["uri"] != "/rpc?x=1" || p["nc"] != "00000001" || p["qop"] != "auth" || p["response"] != want || p["opaque"] != "op" {
			t.Errorf("%s: %v (want response %s)", h, p, want)
		}
		if alg == "" && p["algorithm"] != "MD5" {
			t.Errorf("no algorithm named: %s", h)
		}
	}
}

func TestRedactAuth(t *testing.T) {
	in := `{"id":1,"method":"X","auth":{"realm":"RPC","username":"admin","nonce":1,"cnonce":2,"algorithm":"MD5","response":"0123abcd"}}`
	out := RedactAuth(in)
	if strings.Contains(out, "0123abcd") || !strings.Contains(out, `"response":"xxxxx"`) || !strings.Contains(out, `"username":"admin"`) {
		t.Fatalf("%s", out)
	}
}
