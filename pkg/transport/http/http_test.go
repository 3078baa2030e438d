package httptransport

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/transporttest"
)

// Compile-time check that Dial fits the registry.
var _ transport.DialFunc = Dial

const secret = "s3cr3t-pa55"

// trust returns a TLS config that trusts the test server's certificate.
func trust(srv *httptest.Server) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	return &tls.Config{RootCAs: pool}
}

func startDevice(tlsOn bool) transporttest.StartFunc {
	return func(t *testing.T, h transport.Handler) *transporttest.Device {
		var srv *httptest.Server
		if tlsOn {
			srv = httptest.NewTLSServer(NewHandler(h, HandlerOptions{}))
		} else {
			srv = httptest.NewServer(NewHandler(h, HandlerOptions{}))
		}
		t.Cleanup(srv.Close)
		u := transporttest.MustParseURL(t, srv.URL+"/rpc")
		return &transporttest.Device{
			Dial: func(ctx context.Context, opts transport.Options) (transport.Conn, error) {
				if tlsOn {
					opts.TLS = trust(srv)
				}
				return Dial(ctx, u, opts)
			},
		}
	}
}

func TestConformance(t *testing.T) { transporttest.Run(t, startDevice(false)) }

func TestConformanceHTTPS(t *testing.T) { transporttest.Run(t, startDevice(true)) }

func echo(t *testing.T, c transport.Conn, v any) *frame.Frame {
	t.Helper()
	ctx := transporttest.Ctx(t)
	b, _ := json.Marshal(v)
	req := &frame.Frame{ID: time.Now().UnixNano(), Src: "otactl", Method: transporttest.MethodEcho, Params: b}
	if err := c.Send(ctx, req); err != nil {
		t.Fatalf("send: %v", err)
	}
	resp, err := c.Recv(ctx)
	if err != nil {
		t.Fatalf("recv: %v", err)
	}
	if resp.ID != req.ID {
		t.Fatalf("reply id %d, want %d", resp.ID, req.ID)
	}
	return resp
}

func TestUntrustedCertificateRefused(t *testing.T) {
	transporttest.LeakCheck(t)
	var calls atomic.Int32
	srv := quietTLSServer(NewHandler(transport.HandlerFunc(func(ctx context.Context, req *frame.Frame) *frame.Frame {
		calls.Add(1)
		return &frame.Frame{ID: req.ID}
	}), HandlerOptions{}))
	defer srv.Close()
	// System roots (opts.TLS nil) do not trust the test certificate.
	c, err := Dial(transporttest.Ctx(t), transporttest.MustParseURL(t, srv.URL+"/rpc"), transport.Options{})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	err = c.Send(transporttest.Ctx(t), &frame.Frame{ID: 1, Method: "X"})
	if err == nil {
		t.Fatal("Send to a server with an untrusted certificate succeeded")
	}
	var ua x509.UnknownAuthorityError
	if !errors.As(err, &ua) {
		t.Errorf("error does not wrap x509.UnknownAuthorityError: %v", err)
	}
	if !strings.Contains(err.Error(), "not signed by a CA otactl trusts") || !strings.Contains(err.Error(), "--ca-cert-file") {
		t.Errorf("error does not say the certificate is not trusted and what to do: %v", err)
	}
	if !errors.Is(err, transport.ErrTLS) {
		t.Errorf("error is not transport.ErrTLS: %v", err)
	}
	if calls.Load() != 0 {
		t.Error("the device handler ran although the certificate was refused")
	}
}

// quietTLSServer starts a TLS test server that does not log the handshake
// errors the tests provoke on purpose.
func quietTLSServer(h http.Handler) *httptest.Server {
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	return srv
}

// rawServer answers every request with fn and records the requests.
type rawServer struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []recorded
}

type recorded struct {
	method, path, contentType, auth string
	body                            []byte
}

func newRawServer(t *testing.T, fn func(w http.ResponseWriter, r *http.Request)) *rawServer {
	rs := &rawServer{}
	rs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		rs.mu.Lock()
		rs.reqs = append(rs.reqs, recorded{r.Method, r.URL.Path, r.Header.Get("Content-Type"), r.Header.Get("Authorization"), b})
		rs.mu.Unlock()
		fn(w, r)
	}))
	t.Cleanup(rs.Close)
	return rs
}

func (rs *rawServer) requests() []recorded {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return append([]recorded(nil), rs.reqs...)
}

func TestClientRequestFormat(t *testing.T) {
	transporttest.LeakCheck(t)
	rs := newRawServer(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"id":1099511627776,"src":"dev","result":{"ok":true}}`+"\r\n")
	})
	// No path in the URL: the client posts to /rpc. User info must not
	// turn into a Basic auth header.
	u := transporttest.MustParseURL(t, strings.Replace(rs.URL, "http://", "http://admin:"+secret+"@", 1))
	c, err := Dial(transporttest.Ctx(t), u, transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := &frame.Frame{ID: 1099511627776, Src: "mos", Method: "Sys.GetInfo", Params: json.RawMessage(`{"x":"ü"}`)}
	if err := c.Send(transporttest.Ctx(t), req); err != nil {
		t.Fatalf("send: %v", err)
	}
	got, err := c.Recv(transporttest.Ctx(t))
	if err != nil {
		t.Fatalf("recv: %v", err)
	}
	if got.ID != req.ID || string(got.Result) != `{"ok":true}` {
		t.Fatalf("reply = %+v", got)
	}
	reqs := rs.requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests, want 1", len(reqs))
	}
	r := reqs[0]
	want := `{"src":"mos","id":1099511627776,"method":"Sys.GetInfo","params":{"x":"\u00fc"}}` + "\n"
	if r.method != "POST" || r.path != "/rpc" || r.contentType != "application/json" || string(r.body) != want {
		t.Errorf("request = %s %s (%s) %q\nwant POST /rpc (application/json) %q", r.method, r.path, r.contentType, r.body, want)
	}
	if r.auth != "" {
		t.Errorf("client sent Authorization %q from the URL's user info", r.auth)
	}
}

func TestClientPathAsGiven(t *testing.T) {
	transporttest.LeakCheck(t)
	rs := newRawServer(t, func(w http.ResponseWriter, r *http.Request) {})
	c, err := Dial(transporttest.Ctx(t), transporttest.MustParseURL(t, rs.URL+"/custom/rpc"), transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Send(transporttest.Ctx(t), &frame.Frame{Method: "X"}); err != nil {
		t.Fatal(err)
	}
	if p := rs.requests()[0].path; p != "/custom/rpc" {
		t.Errorf("path = %q, want /custom/rpc", p)
	}
}

func TestClientNon200(t *testing.T) {
	transporttest.LeakCheck(t)
	cases := []struct {
		status   int
		wantText []string
		auth     bool
	}{
		{http.StatusInternalServerError, []string{"HTTP 500", "device log"}, false},
		{http.StatusNotFound, []string{"HTTP 404", "/rpc"}, false},
		{http.StatusRequestEntityTooLarge, []string{"HTTP 413", "smaller"}, false},
		{http.StatusUnauthorized, []string{`refused user "admin"`, "HTTP digest", `realm "dev"`}, true},
	}
	for _, tc := range cases {
		t.Run(http.StatusText(tc.status), func(t *testing.T) {
			rs := newRawServer(t, func(w http.ResponseWriter, r *http.Request) {
				if tc.status == http.StatusUnauthorized {
					w.Header().Set("WWW-Authenticate", `Digest qop="auth", realm="dev", nonce="5f1", algorithm=MD5`)
				}
				http.Error(w, "nope", tc.status)
			})
			u := transporttest.MustParseURL(t, strings.Replace(rs.URL, "http://", "http://admin:"+secret+"@", 1)+"/rpc")
			c, err := Dial(transporttest.Ctx(t), u, transport.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			err = c.Send(transporttest.Ctx(t), &frame.Frame{ID: 5, Method: "Sys.GetInfo"})
			if err == nil {
				t.Fatal("Send succeeded on a non-200 answer")
			}
			for _, w := range tc.wantText {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if errors.Is(err, transport.ErrAuth) != tc.auth {
				t.Errorf("errors.Is(err, transport.ErrAuth) = %v, want %v (err %v)", !tc.auth, tc.auth, err)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error leaks the URL password: %v", err)
			}
			// Nothing is queued for Recv.
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
			defer cancel()
			if f, err := c.Recv(ctx); err == nil {
				t.Errorf("Recv returned a frame after a failed Send: %+v", f)
			}
		})
	}
}

func TestErrorsNeverContainPassword(t *testing.T) {
	transporttest.LeakCheck(t)
	// A port with nothing listening.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := l.Addr().String()
	l.Close()

	tlsSrv := quietTLSServer(http.NotFoundHandler())
	defer tlsSrv.Close()

	bad := newRawServer(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "<html>not a frame</html>")
	})

	urls := []string{
		"http://admin:" + secret + "@" + closedAddr + "/rpc",
		"http://" + secret + "@" + closedAddr + "/rpc", // a token-like user name
		strings.Replace(tlsSrv.URL, "https://", "https://admin:"+secret+"@", 1) + "/rpc",
		strings.Replace(bad.URL, "http://", "http://admin:"+secret+"@", 1) + "/rpc",
	}
	for _, s := range urls {
		c, err := Dial(transporttest.Ctx(t), transporttest.MustParseURL(t, s), transport.Options{})
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		err = c.Send(transporttest.Ctx(t), &frame.Frame{ID: 1, Method: "X"})
		c.Close()
		if err == nil {
			t.Fatalf("Send via %s succeeded", transport.RedactString(s))
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error leaks the secret: %v", err)
		}
		t.Logf("%v", err)
	}
	for _, s := range []string{
		"ftp://admin:" + secret + "@host/rpc",
		"http://admin:" + secret + "@/rpc",
		"http://admin:" + secret + "@host:99999/rpc",
	} {
		_, err := Dial(transporttest.Ctx(t), transporttest.MustParseURL(t, s), transport.Options{})
		if err == nil {
			t.Fatalf("Dial accepted %s", transport.RedactString(s))
		}
		if !errors.Is(err, transport.ErrBadPort) {
			t.Errorf("Dial error does not wrap ErrBadPort: %v", err)
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("Dial error leaks the secret: %v", err)
		}
	}
}

func TestDialDoesNotNeedDevice(t *testing.T) {
	transporttest.LeakCheck(t)
	c, err := Dial(transporttest.Ctx(t), transporttest.MustParseURL(t, "http://127.0.0.1:1/rpc"), transport.Options{})
	if err != nil {
		t.Fatalf("Dial contacted the device: %v", err)
	}
	c.Close()
	if _, err := Dial(transporttest.Ctx(t), nil, transport.Options{}); err == nil {
		t.Fatal("Dial(nil URL) succeeded")
	}
}

func TestResponseSizeLimit(t *testing.T) {
	transporttest.LeakCheck(t)
	rs := newRawServer(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"id":1,"result":"`+strings.Repeat("x", 500)+`"}`)
	})
	c, err := Dial(transporttest.Ctx(t), transporttest.MustParseURL(t, rs.URL+"/rpc"), transport.Options{MaxFrameSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.Send(transporttest.Ctx(t), &frame.Frame{ID: 1, Method: "X"})
	if err == nil || !strings.Contains(err.Error(), "larger than 100 bytes") {
		t.Fatalf("Send = %v, want a size limit error", err)
	}
}

func TestRequestWithoutIDQueuesNothing(t *testing.T) {
	transporttest.LeakCheck(t)
	var ran atomic.Int32
	d := transporttest.NewEchoDevice()
	h := transport.HandlerFunc(func(ctx context.Context, req *frame.Frame) *frame.Frame {
		ran.Add(1)
		if req.ID == 0 {
			// Even a handler that answers: no reply goes out.
			return &frame.Frame{Result: json.RawMessage(`"oops"`)}
		}
		return d.HandleFrame(ctx, req)
	})
	srv := httptest.NewServer(NewHandler(h, HandlerOptions{}))
	defer srv.Close()

	// Raw: an empty 200.
	resp, err := srv.Client().Post(srv.URL+"/rpc", "application/json", strings.NewReader(`{"method":"Test.Echo","params":1}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || len(body) != 0 {
		t.Fatalf("no-id request: %d %q, want 200 with empty body", resp.StatusCode, body)
	}
	if ran.Load() != 1 {
		t.Fatalf("handler ran %d times, want 1", ran.Load())
	}

	// Client: nothing queued, so the next Recv gets the next real reply.
	c, err := Dial(transporttest.Ctx(t), transporttest.MustParseURL(t, srv.URL+"/rpc"), transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Send(transporttest.Ctx(t), &frame.Frame{Method: transporttest.MethodEcho}); err != nil {
		t.Fatal(err)
	}
	echo(t, c, "after")
	srv.Client().CloseIdleConnections()
}

// post sends body to path on srv and returns status and body.
func post(t *testing.T, srv *httptest.Server, method, path, body string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequestWithContext(transporttest.Ctx(t), method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func TestMethodPath(t *testing.T) {
	transporttest.LeakCheck(t)
	d := transporttest.NewEchoDevice()
	h := transport.HandlerFunc(func(ctx context.Context, req *frame.Frame) *frame.Frame {
		resp := &frame.Frame{ID: req.ID}
		switch req.Method {
		case "Test.Forbidden":
			resp.Error = &frame.Error{Code: 403, Message: "unauthorized"}
		case "Test.Fail":
			resp.Error = &frame.Error{Code: 400, Message: "invalid delay value"}
		case "Test.Auth":
			resp.Error = &frame.Error{Code: 401, Message: "{}"}
		case "Test.OldOK":
			resp.Error = &frame.Error{Code: 0}
			resp.Result = json.RawMessage(`true`)
		case "Test.NoResult":
		case "Test.Unicode":
			resp.Result = json.RawMessage(`{"name":"Grüße 🚀"}`)
		default:
			return d.HandleFrame(ctx, req)
		}
		return resp
	})
	srv := httptest.NewServer(NewHandler(h, HandlerOptions{}))
	defer srv.Close()
	defer srv.Client().CloseIdleConnections()

	cases := []struct {
		method, path, body string
		status             int
		want               string
	}{
		{"POST", "/rpc/Test.Echo", `{"a":[1,2]}`, 200, `{"a":[1,2]}`},
		{"POST", "/rpc/Test.Echo", ``, 200, `null`},
		{"POST", "/rpc/Test.Echo", "\"x\"\n", 200, `"x"`},
		{"GET", "/rpc/Test.Echo", ``, 200, `null`},
		{"GET", "/rpc/Test.Echo?n=1&s=abc&o=%7B%22k%22%3Atrue%7D", ``, 200, `{"n":1,"s":"abc","o":{"k":true}}`},
		{"POST", "/rpc/No.Such", `{}`, 404, `{"code":404,"message":"No handler for No.Such"}`},
		{"POST", "/rpc/Test.Forbidden", ``, 403, `{"code":403,"message":"unauthorized"}`},
		{"POST", "/rpc/Test.Fail", ``, 500, `{"code":400,"message":"invalid delay value"}`},
		{"POST", "/rpc/Test.Auth", ``, 500, `{"code":401,"message":"{}"}`},
		{"POST", "/rpc/Test.OldOK", ``, 200, `true`},
		{"POST", "/rpc/Test.NoResult", ``, 200, ``},
		{"POST", "/rpc/Test.Unicode", ``, 200, `{"name":"Gr\u00fc\u00dfe \ud83d\ude80"}`},
		{"POST", "/rpc/Test.Echo", `{not json`, 400, ``},
		{"PUT", "/rpc/Test.Echo", ``, 405, ``},
		{"POST", "/other", `{}`, 404, ``},
	}
	for _, tc := range cases {
		status, body, hdr := post(t, srv, tc.method, tc.path, tc.body)
		if status != tc.status {
			t.Errorf("%s %s %q: status %d, want %d (body %q)", tc.method, tc.path, tc.body, status, tc.status, body)
			continue
		}
		if tc.want != "" || status == 200 {
			if body != tc.want+"\r\n" {
				t.Errorf("%s %s %q: body %q, want %q", tc.method, tc.path, tc.body, body, tc.want+"\r\n")
			}
			if ct := hdr.Get("Content-Type"); ct != "application/json" {
				t.Errorf("%s %s: Content-Type %q", tc.method, tc.path, ct)
			}
		}
	}
	status, _, hdr := post(t, srv, "OPTIONS", "/rpc/Test.Echo", "")
	if status != 200 || hdr.Get("Access-Control-Allow-Origin") != "*" {
		t.Errorf("OPTIONS: %d, CORS %q", status, hdr.Get("Access-Control-Allow-Origin"))
	}
}

func TestFramePathDeviceAnswers(t *testing.T) {
	transporttest.LeakCheck(t)
	d := transporttest.NewEchoDevice()
	srv := httptest.NewServer(NewHandler(d, HandlerOptions{}))
	defer srv.Close()
	defer srv.Client().CloseIdleConnections()

	// Whole frame in, whole frame out; ASCII only.
	status, body, _ := post(t, srv, "POST", "/rpc", `{"id":7,"src":"x","method":"Test.Echo","params":{"s":"Grüße"}}`)
	want := `{"src":"testdev","dst":"x","id":7,"result":{"s":"Gr\u00fc\u00dfe"}}` + "\r\n"
	if status != 200 || body != want {
		t.Errorf("POST /rpc: %d %q, want 200 %q", status, body, want)
	}
	// RPC errors travel inside a 200.
	status, body, _ = post(t, srv, "POST", "/rpc", `{"id":8,"method":"No.Such"}`)
	if status != 200 || !strings.Contains(body, `"error":{"code":404`) {
		t.Errorf("unknown method on /rpc: %d %q", status, body)
	}
	// Not a frame.
	if status, _, _ := post(t, srv, "POST", "/rpc", `[1,2]`); status != 400 {
		t.Errorf("non-frame body: status %d, want 400", status)
	}
	// Over the device frame limit: 413, handler not run.
	big := `{"id":9,"method":"Test.Echo","params":"` + strings.Repeat("A", frame.MaxSize) + `"}`
	if status, _, _ := post(t, srv, "POST", "/rpc", big); status != http.StatusRequestEntityTooLarge {
		t.Errorf("big frame: status %d, want 413", status)
	}
	if status, _, _ := post(t, srv, "POST", "/rpc/Test.Echo", `"`+strings.Repeat("A", frame.MaxSize)+`"`); status != http.StatusRequestEntityTooLarge {
		t.Errorf("big args: status %d, want 413", status)
	}
	if status, _, _ := post(t, srv, "GET", "/rpc", ""); status != http.StatusMethodNotAllowed {
		t.Errorf("GET /rpc: status %d, want 405", status)
	}
}

func TestCustomFrameLimit(t *testing.T) {
	transporttest.LeakCheck(t)
	srv := httptest.NewServer(NewHandler(transporttest.NewEchoDevice(), HandlerOptions{MaxFrameSize: 120}))
	defer srv.Close()
	c, err := Dial(transporttest.Ctx(t), transporttest.MustParseURL(t, srv.URL+"/rpc"), transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.Send(transporttest.Ctx(t), &frame.Frame{ID: 1, Method: transporttest.MethodEcho, Params: json.RawMessage(`"` + strings.Repeat("A", 200) + `"`)})
	if err == nil || !strings.Contains(err.Error(), "413") {
		t.Fatalf("Send of an oversized frame = %v, want an HTTP 413 error", err)
	}
	echo(t, c, "ok")
}

func TestWebSocketUpgradeDelegated(t *testing.T) {
	transporttest.LeakCheck(t)
	var hits atomic.Int32
	ws := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.WriteHeader(http.StatusTeapot)
	})
	with := httptest.NewServer(NewHandler(transporttest.NewEchoDevice(), HandlerOptions{WebSocket: ws}))
	defer with.Close()
	without := httptest.NewServer(NewHandler(transporttest.NewEchoDevice(), HandlerOptions{}))
	defer without.Close()

	upgrade := func(srv *httptest.Server, path string) int {
		req, _ := http.NewRequestWithContext(transporttest.Ctx(t), "GET", srv.URL+path, nil)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "websocket")
		req.Header.Set("Sec-WebSocket-Version", "13")
		req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if s := upgrade(with, "/rpc"); s != http.StatusTeapot || hits.Load() != 1 {
		t.Errorf("upgrade on /rpc: status %d, ws handler hits %d; want it delegated", s, hits.Load())
	}
	if s := upgrade(with, "/elsewhere"); s != http.StatusNotFound {
		t.Errorf("upgrade on /elsewhere: status %d, want 404", s)
	}
	if s := upgrade(without, "/rpc"); s != http.StatusServiceUnavailable {
		t.Errorf("upgrade without a WebSocket handler: status %d, want 503", s)
	}
	// Plain POSTs on the shared handler still work.
	if status, _, _ := post(t, with, "POST", "/rpc/Test.Echo", "1"); status != 200 {
		t.Errorf("POST on shared handler: %d", status)
	}
	with.Client().CloseIdleConnections()
	without.Client().CloseIdleConnections()
}

func TestCloseCancelsInflightSend(t *testing.T) {
	transporttest.LeakCheck(t)
	d := transporttest.NewEchoDevice()
	srv := httptest.NewServer(NewHandler(d, HandlerOptions{}))
	defer srv.Close()
	c, err := Dial(transporttest.Ctx(t), transporttest.MustParseURL(t, srv.URL+"/rpc"), transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- c.Send(context.Background(), &frame.Frame{ID: 3, Method: transporttest.MethodBlock})
	}()
	select {
	case <-d.Entered:
	case <-time.After(transporttest.Timeout):
		t.Fatal("request never reached the device")
	}
	c.Close()
	select {
	case err := <-done:
		if !errors.Is(err, transport.ErrClosed) {
			t.Fatalf("in-flight Send after Close = %v, want ErrClosed", err)
		}
	case <-time.After(transporttest.Timeout):
		t.Fatal("Close did not cancel the in-flight POST")
	}
}

func TestHandlerCtxCancelledOnDisconnect(t *testing.T) {
	transporttest.LeakCheck(t)
	entered := make(chan struct{})
	cancelled := make(chan struct{})
	h := transport.HandlerFunc(func(ctx context.Context, req *frame.Frame) *frame.Frame {
		close(entered)
		<-ctx.Done()
		close(cancelled)
		return nil
	})
	srv := httptest.NewServer(NewHandler(h, HandlerOptions{}))
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "POST", srv.URL+"/rpc", bytes.NewReader([]byte(`{"id":1,"method":"X"}`)))
		if resp, err := srv.Client().Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	select {
	case <-entered:
	case <-time.After(transporttest.Timeout):
		t.Fatal("handler not called")
	}
	cancel()
	select {
	case <-cancelled:
	case <-time.After(transporttest.Timeout):
		t.Fatal("client disconnect did not cancel the handler's ctx")
	}
	srv.Client().CloseIdleConnections()
}
