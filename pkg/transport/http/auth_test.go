package httptransport

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/transporttest"
)

// digestDevice answers POST /rpc only with a valid HTTP digest of
// admin:pw for its current nonce, else 401 with a challenge, as a device
// does (docs/security.md).
type digestDevice struct {
	mu         sync.Mutex
	nonce      string
	challenges int
	ok         int
}

func (d *digestDevice) serve(w http.ResponseWriter, r *http.Request) {
	d.mu.Lock()
	defer d.mu.Unlock()
	body, _ := io.ReadAll(r.Body)
	ha1 := transport.DigestHA1("MD5", "admin", "RPC", "pw")
	_, rest, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	p, _ := transport.ParseAuthParams(rest)
	want := transport.DigestResponse("MD5", ha1, d.nonce, p["nc"], p["cnonce"], p["qop"], r.Method, r.URL.RequestURI())
	if p["username"] != "admin" || p["nonce"] != d.nonce || p["response"] != want || p["uri"] != "/rpc" {
		d.challenges++
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Digest qop="auth", realm="RPC", nonce="%s", algorithm=MD5`, d.nonce))
		w.Header().Set("Connection", "close")
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	d.ok++
	f, _ := frame.Parse(body)
	fmt.Fprintf(w, `{"id":%d,"src":"dev","result":true}`, f.ID)
}

func (d *digestDevice) counts() (challenges, ok int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.challenges, d.ok
}

// The client answers the challenge, answers it up front on later
// requests, answers a fresh one when the nonce changed, and reports a
// refusal naming the user, never the password.
func TestDigestChallengeAnswered(t *testing.T) {
	transporttest.LeakCheck(t)
	dev := &digestDevice{nonce: "65f1a2b3"}
	rs := httptest.NewServer(http.HandlerFunc(dev.serve))
	t.Cleanup(rs.Close)
	u := transporttest.MustParseURL(t, rs.URL+"/rpc")
	c, err := Dial(transporttest.Ctx(t), u, transport.Options{Creds: &transport.Credentials{User: "admin", Password: "pw"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	send := func(id int64) {
		t.Helper()
		if err := c.Send(transporttest.Ctx(t), &frame.Frame{ID: id, Method: "Sys.GetInfo"}); err != nil {
			t.Fatal(err)
		}
		f, err := c.Recv(transporttest.Ctx(t))
		if err != nil || f.ID != id {
			t.Fatalf("reply %+v %v", f, err)
		}
	}
	send(1)
	send(2)
	send(3)
	if ch, ok := dev.counts(); ch != 1 || ok != 3 {
		t.Fatalf("%d challenges, %d answered, want 1 and 3", ch, ok)
	}
	if got := c.(transport.AuthenticatedConn).AuthenticatedUser(); got != "admin" {
		t.Errorf("AuthenticatedUser = %q", got)
	}
	dev.mu.Lock()
	dev.nonce = "65f1b000" // the old one went stale
	dev.mu.Unlock()
	send(4)
	if ch, ok := dev.counts(); ch != 2 || ok != 4 {
		t.Fatalf("after a new nonce: %d challenges, %d answered, want 2 and 4", ch, ok)
	}

	for _, tc := range []struct {
		creds *transport.Credentials
		kind  transport.AuthKind
		want  string
	}{
		{nil, transport.AuthRequired, `requires authentication (HTTP digest, realm "RPC"): pass --rpc-creds`},
		{&transport.Credentials{User: "admin", Password: "H1dden-guess"}, transport.AuthRefused, `Sys.GetInfo: the device at ` + rs.URL + `/rpc refused user "admin"`},
	} {
		c, err := Dial(transporttest.Ctx(t), u, transport.Options{Creds: tc.creds})
		if err != nil {
			t.Fatal(err)
		}
		err = c.Send(transporttest.Ctx(t), &frame.Frame{ID: 9, Method: "Sys.GetInfo"})
		c.Close()
		var ae *transport.AuthError
		if !errors.As(err, &ae) || ae.Kind != tc.kind || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "H1dden") {
			t.Errorf("%v", err)
		}
	}
}
