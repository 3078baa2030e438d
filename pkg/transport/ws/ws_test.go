package ws

import (
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
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
	httptransport "github.com/otactl/otactl/pkg/transport/http"
	"github.com/otactl/otactl/pkg/transport/transporttest"
)

// Compile-time checks.
var (
	_ transport.DialFunc = Dial
	_ http.Handler       = (*Handler)(nil)
)

const secret = "t0ken-s3cret"

func wsURL(srv *httptest.Server) string {
	return "ws" + strings.TrimPrefix(srv.URL, "http")
}

func trust(srv *httptest.Server) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	return &tls.Config{RootCAs: pool}
}

func quietServer(h http.Handler, tlsOn bool) *httptest.Server {
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	if tlsOn {
		srv.StartTLS()
	} else {
		srv.Start()
	}
	return srv
}

// device is a started device side: the WebSocket handler mounted behind the
// HTTP transport's handler, sharing one listener as on a real device.
type device struct {
	srv *httptest.Server
	ws  *Handler
}

func startShared(t *testing.T, h transport.Handler, tlsOn bool) *device {
	wsh := NewHandler(h, transport.Options{})
	srv := quietServer(httptransport.NewHandler(h, httptransport.HandlerOptions{WebSocket: wsh}), tlsOn)
	t.Cleanup(srv.Close)
	t.Cleanup(wsh.CloseAll) // runs before srv.Close
	return &device{srv: srv, ws: wsh}
}

func startDevice(tlsOn bool) transporttest.StartFunc {
	return func(t *testing.T, h transport.Handler) *transporttest.Device {
		d := startShared(t, h, tlsOn)
		u := transporttest.MustParseURL(t, wsURL(d.srv)+"/rpc")
		return &transporttest.Device{
			Dial: func(ctx context.Context, opts transport.Options) (transport.Conn, error) {
				if tlsOn {
					opts.TLS = trust(d.srv)
				}
				return Dial(ctx, u, opts)
			},
		}
	}
}

func TestConformance(t *testing.T) { transporttest.Run(t, startDevice(false)) }

func TestConformanceWSS(t *testing.T) { transporttest.Run(t, startDevice(true)) }

func TestSharedListenerServesHTTPToo(t *testing.T) {
	transporttest.LeakCheck(t)
	d := startShared(t, transporttest.NewEchoDevice(), false)
	c := dial(t, wsURL(d.srv)+"/rpc", transport.Options{})
	echo(t, c, "over ws")
	// The same listener answers plain HTTP RPC.
	hc, err := httptransport.Dial(transporttest.Ctx(t), transporttest.MustParseURL(t, d.srv.URL+"/rpc"), transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	echo(t, hc, "over http")
}

func dial(t *testing.T, s string, opts transport.Options) transport.Conn {
	t.Helper()
	c, err := Dial(transporttest.Ctx(t), transporttest.MustParseURL(t, s), opts)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

var idSeq struct {
	sync.Mutex
	n int64
}

func request(method string, params any) *frame.Frame {
	idSeq.Lock()
	idSeq.n++
	id := 1<<40 + idSeq.n
	idSeq.Unlock()
	b, _ := json.Marshal(params)
	return &frame.Frame{ID: id, Src: "otactl", Method: method, Params: b}
}

func echo(t *testing.T, c transport.Conn, v any) {
	t.Helper()
	ctx := transporttest.Ctx(t)
	req := request(transporttest.MethodEcho, v)
	if err := c.Send(ctx, req); err != nil {
		t.Fatalf("send: %v", err)
	}
	resp, err := c.Recv(ctx)
	if err != nil {
		t.Fatalf("recv: %v", err)
	}
	want, _ := json.Marshal(v)
	if resp.ID != req.ID || string(resp.Result) != string(want) {
		t.Fatalf("reply %+v (result %s), want id %d result %s", resp, resp.Result, req.ID, want)
	}
}

func TestUntrustedCertificateRefused(t *testing.T) {
	transporttest.LeakCheck(t)
	d := startShared(t, transporttest.NewEchoDevice(), true)
	u := strings.Replace(wsURL(d.srv), "wss://", "wss://"+secret+"@", 1) + "/rpc"
	_, err := Dial(transporttest.Ctx(t), transporttest.MustParseURL(t, u), transport.Options{})
	if err == nil {
		t.Fatal("Dial to a server with an untrusted certificate succeeded")
	}
	var ua x509.UnknownAuthorityError
	if !errors.As(err, &ua) || !strings.Contains(err.Error(), "not signed by a CA otactl trusts") || !errors.Is(err, transport.ErrTLS) {
		t.Errorf("error does not clearly say the certificate is not trusted: %v", err)
	}
	if strings.Contains(err.Error(), secret) {
		t.Errorf("error leaks the token: %v", err)
	}
	if n := d.ws.NumConns(); n != 0 {
		t.Errorf("%d connections open on the device", n)
	}
}

// capture is a raw WebSocket server recording what a client sends.
type capture struct {
	srv *httptest.Server

	mu       sync.Mutex
	protocol string // Sec-WebSocket-Protocol offered
	auth     string // Authorization header
	path     string
	msgs     []message
	got      chan struct{} // signalled per message
	conn     *websocket.Conn
	connSet  chan struct{}
}

type message struct {
	typ  int
	data string
}

func newCapture(t *testing.T) *capture {
	c := &capture{got: make(chan struct{}, 64), connSet: make(chan struct{})}
	up := websocket.Upgrader{Subprotocols: []string{Subprotocol}}
	c.srv = quietServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		c.protocol = r.Header.Get("Sec-WebSocket-Protocol")
		c.auth = r.Header.Get("Authorization")
		c.path = r.URL.Path
		c.mu.Unlock()
		if r.Header.Get("X-Refuse") != "" || strings.HasSuffix(r.URL.Path, "/refuse") {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		c.mu.Lock()
		first := c.conn == nil
		if first {
			c.conn = ws
		}
		c.mu.Unlock()
		if first {
			close(c.connSet)
		}
		for {
			typ, data, err := ws.ReadMessage()
			if err != nil {
				return
			}
			c.mu.Lock()
			c.msgs = append(c.msgs, message{typ, string(data)})
			c.mu.Unlock()
			c.got <- struct{}{}
		}
	}), false)
	t.Cleanup(c.srv.Close)
	return c
}

func (c *capture) wait(t *testing.T, n int) []message {
	t.Helper()
	for i := 0; i < n; i++ {
		select {
		case <-c.got:
		case <-time.After(transporttest.Timeout):
			t.Fatalf("server got %d messages, want %d", i, n)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]message(nil), c.msgs...)
}

func (c *capture) serverConn(t *testing.T) *websocket.Conn {
	t.Helper()
	select {
	case <-c.connSet:
	case <-time.After(transporttest.Timeout):
		t.Fatal("no connection")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn
}

// TestGoldenWire pins what a client puts on the wire: the subprotocol it
// offers, and exactly one text message "<frame json>\n" per frame.
func TestGoldenWire(t *testing.T) {
	transporttest.LeakCheck(t)
	cp := newCapture(t)
	c := dial(t, wsURL(cp.srv), transport.Options{}) // no path: /rpc
	frames := []*frame.Frame{
		{ID: 1711787588495, Src: "mos", Method: "Sys.GetInfo", Params: json.RawMessage(`{"x":1}`)},
		{ID: 1099511627776, Src: "otactl", Method: "OTA.Update", Params: json.RawMessage(`{"url":"http://h/fw.zip","name":"Grüße"}`)},
	}
	golden := []string{
		`{"src":"mos","id":1711787588495,"method":"Sys.GetInfo","params":{"x":1}}` + "\n",
		`{"src":"otactl","id":1099511627776,"method":"OTA.Update","params":{"url":"http://h/fw.zip","name":"Gr\u00fc\u00dfe"}}` + "\n",
	}
	for _, f := range frames {
		if err := c.Send(transporttest.Ctx(t), f); err != nil {
			t.Fatalf("send: %v", err)
		}
	}
	msgs := cp.wait(t, 2)
	if len(msgs) != 2 {
		t.Fatalf("server got %d messages, want exactly 2", len(msgs))
	}
	for i, m := range msgs {
		if m.typ != websocket.TextMessage {
			t.Errorf("message %d has type %d, want text (%d)", i, m.typ, websocket.TextMessage)
		}
		if m.data != golden[i] {
			t.Errorf("message %d = %q\nwant          %q", i, m.data, golden[i])
		}
	}
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.protocol != "clubby.cesanta.com" {
		t.Errorf("offered subprotocol %q, want clubby.cesanta.com", cp.protocol)
	}
	if cp.path != "/rpc" {
		t.Errorf("path %q, want /rpc", cp.path)
	}
	if cp.auth != "" {
		t.Errorf("Authorization %q sent without user info in the URL", cp.auth)
	}
}

func TestReceivesTextAndBinary(t *testing.T) {
	transporttest.LeakCheck(t)
	cp := newCapture(t)
	c := dial(t, wsURL(cp.srv)+"/rpc", transport.Options{})
	sc := cp.serverConn(t)
	// Written from the test goroutine only; the capture handler only reads.
	if err := sc.WriteMessage(websocket.TextMessage, []byte(`{"id":1,"result":"t"}`+"\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := sc.WriteMessage(websocket.BinaryMessage, []byte(`{"id":2,"result":"b"}`)); err != nil {
		t.Fatal(err)
	}
	if err := sc.WriteMessage(websocket.TextMessage, []byte(`not a frame`)); err != nil {
		t.Fatal(err)
	}
	if err := sc.WriteMessage(websocket.TextMessage, []byte(`{"id":3}`)); err != nil {
		t.Fatal(err)
	}
	for _, want := range []int64{1, 2, 0, 3} {
		f, err := c.Recv(transporttest.Ctx(t))
		if want == 0 {
			// A message that is not a frame is reported, not dropped, and
			// the connection goes on.
			var nr *transport.NotRPCError
			if !errors.As(err, &nr) || !errors.Is(err, transport.ErrNotRPC) || nr.ID != 0 ||
				!strings.Contains(err.Error(), `not an RPC frame: a WebSocket text message "not a frame" (not JSON)`) {
				t.Fatalf("recv of a non-frame = %v, %v; want a NotRPCError", f, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		if f.ID != want {
			t.Fatalf("got id %d, want %d", f.ID, want)
		}
	}
}

func TestBearerToken(t *testing.T) {
	transporttest.LeakCheck(t)
	for _, tc := range []struct{ userinfo, want string }{
		{secret, "Bearer " + secret},
		{"user:" + secret, "Bearer user:" + secret},
	} {
		cp := newCapture(t)
		u := strings.Replace(wsURL(cp.srv), "ws://", "ws://"+tc.userinfo+"@", 1) + "/rpc"
		c := dial(t, u, transport.Options{})
		if err := c.Send(transporttest.Ctx(t), &frame.Frame{ID: 1, Method: "X"}); err != nil {
			t.Fatal(err)
		}
		cp.wait(t, 1)
		cp.mu.Lock()
		got := cp.auth
		cp.mu.Unlock()
		if got != tc.want {
			t.Errorf("Authorization = %q, want %q", got, tc.want)
		}
		c.Close()
	}
}

func TestErrorsNeverContainToken(t *testing.T) {
	transporttest.LeakCheck(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := l.Addr().String()
	l.Close()
	cp := newCapture(t)
	plain := quietServer(http.NotFoundHandler(), false)
	defer plain.Close()

	for _, s := range []string{
		"ws://" + secret + "@" + closedAddr + "/rpc",
		"ws://user:" + secret + "@" + closedAddr + "/rpc",
		strings.Replace(wsURL(cp.srv), "ws://", "ws://"+secret+"@", 1) + "/refuse",
		strings.Replace(wsURL(plain), "ws://", "ws://"+secret+"@", 1) + "/rpc",
		"http://" + secret + "@host/rpc",
		"ws://" + secret + "@/rpc",
	} {
		_, err := Dial(transporttest.Ctx(t), transporttest.MustParseURL(t, s), transport.Options{})
		if err == nil {
			t.Fatalf("Dial %s succeeded", transport.RedactString(s))
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error leaks the token: %v", err)
		}
		t.Log(err)
	}
}

func TestHandshakeRefusedSaysStatus(t *testing.T) {
	transporttest.LeakCheck(t)
	cp := newCapture(t)
	_, err := Dial(transporttest.Ctx(t), transporttest.MustParseURL(t, wsURL(cp.srv)+"/refuse"), transport.Options{})
	if err == nil || !strings.Contains(err.Error(), "401") || !strings.Contains(err.Error(), "token") {
		t.Fatalf("Dial = %v, want an error naming HTTP 401 and the token", err)
	}
	// A device without WebSocket RPC answers 503 on /rpc.
	srv := quietServer(httptransport.NewHandler(transporttest.NewEchoDevice(), httptransport.HandlerOptions{}), false)
	defer srv.Close()
	_, err = Dial(transporttest.Ctx(t), transporttest.MustParseURL(t, wsURL(srv)+"/rpc"), transport.Options{})
	if err == nil || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), "rpc.ws.enable") {
		t.Fatalf("Dial = %v, want an error naming HTTP 503 and rpc.ws.enable", err)
	}
}

func TestReadErrorIsPermanent(t *testing.T) {
	transporttest.LeakCheck(t)
	cp := newCapture(t)
	c := dial(t, wsURL(cp.srv)+"/rpc", transport.Options{})
	sc := cp.serverConn(t)
	sc.Close() // the device drops the link (reboot)
	for i := 0; i < 2; i++ {
		_, err := c.Recv(transporttest.Ctx(t))
		if err == nil || errors.Is(err, transport.ErrClosed) || errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Recv #%d after the device dropped the link = %v, want the read error", i, err)
		}
	}
}

func TestClientReadLimit(t *testing.T) {
	transporttest.LeakCheck(t)
	cp := newCapture(t)
	c := dial(t, wsURL(cp.srv)+"/rpc", transport.Options{MaxFrameSize: 100})
	sc := cp.serverConn(t)
	if err := sc.WriteMessage(websocket.TextMessage, []byte(`{"id":1,"result":"`+strings.Repeat("x", 200)+`"}`)); err != nil {
		t.Fatal(err)
	}
	_, err := c.Recv(transporttest.Ctx(t))
	if !errors.Is(err, transport.ErrNotRPC) || !strings.Contains(err.Error(), "larger than 100 bytes") ||
		!strings.Contains(err.Error(), "(more than 100 bytes)") {
		t.Fatalf("Recv = %v, want a frame size error", err)
	}
	// The oversized message was skipped whole: the next one is read.
	if err := sc.WriteMessage(websocket.TextMessage, []byte(`{"id":2,"result":1}`)); err != nil {
		t.Fatal(err)
	}
	if f, err := c.Recv(transporttest.Ctx(t)); err != nil || f.ID != 2 {
		t.Fatalf("Recv after an oversized message = %v, %v", f, err)
	}
	// Past the hard limit the connection is given up, after saying why.
	if err := sc.WriteMessage(websocket.TextMessage, []byte(strings.Repeat("x", 2000))); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Recv(transporttest.Ctx(t)); !errors.Is(err, transport.ErrNotRPC) {
		t.Fatalf("Recv of a huge message = %v, want ErrNotRPC", err)
	}
	if _, err := c.Recv(transporttest.Ctx(t)); err == nil || errors.Is(err, transport.ErrNotRPC) {
		t.Fatalf("Recv after a huge message = %v, want the read error", err)
	}
}

func TestSendHonoursCtx(t *testing.T) {
	transporttest.LeakCheck(t)
	d := startShared(t, transporttest.NewEchoDevice(), false)
	c := dial(t, wsURL(d.srv)+"/rpc", transport.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Send(ctx, request(transporttest.MethodEcho, 1)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Send with a cancelled ctx = %v, want context.Canceled", err)
	}
	echo(t, c, "still fine")
}

// TestSendUnblocksOnCtx fills the socket towards a peer that never reads: a
// Send blocked in the write returns when its ctx ends.
func TestSendUnblocksOnCtx(t *testing.T) {
	transporttest.LeakCheck(t)
	release := make(chan struct{})
	up := websocket.Upgrader{Subprotocols: []string{Subprotocol}}
	srv := quietServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		<-release // never read
	}), false)
	defer srv.Close()
	defer close(release)
	c := dial(t, wsURL(srv)+"/rpc", transport.Options{})
	big := request("X", strings.Repeat("A", 64<<10))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var err error
	for i := 0; i < 10000; i++ {
		if err = c.Send(ctx, big); err != nil {
			break
		}
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Send to a peer that does not read = %v, want context.DeadlineExceeded", err)
	}
	done := make(chan struct{})
	go func() { c.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(transporttest.Timeout):
		t.Fatal("Close hung after a stuck write")
	}
}

func TestDeviceDropsOversizedFrames(t *testing.T) {
	transporttest.LeakCheck(t)
	d := startShared(t, transporttest.NewEchoDevice(), false)
	c := dial(t, wsURL(d.srv)+"/rpc", transport.Options{})
	big := request(transporttest.MethodEcho, strings.Repeat("A", frame.MaxSize))
	if err := c.Send(transporttest.Ctx(t), big); err != nil {
		t.Fatalf("send: %v", err)
	}
	// The big frame gets no reply; the next one does, on the same link.
	echo(t, c, "small")
}

func TestCloseAll(t *testing.T) {
	transporttest.LeakCheck(t)
	dev := transporttest.NewEchoDevice()
	d := startShared(t, dev, false)
	a := dial(t, wsURL(d.srv)+"/rpc", transport.Options{})
	b := dial(t, wsURL(d.srv)+"/rpc", transport.Options{})
	echo(t, a, "a")
	echo(t, b, "b")
	if n := d.ws.NumConns(); n != 2 {
		t.Fatalf("NumConns = %d, want 2", n)
	}
	// A handler blocked in a long call (OTA.Update) is cancelled.
	if err := a.Send(transporttest.Ctx(t), request(transporttest.MethodBlock, "slow")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-dev.Entered:
	case <-time.After(transporttest.Timeout):
		t.Fatal("request never reached the device")
	}
	d.ws.CloseAll() // returns only after the blocked handler returned
	if n := d.ws.NumConns(); n != 0 {
		t.Fatalf("NumConns after CloseAll = %d", n)
	}
	for _, c := range []transport.Conn{a, b} {
		if _, err := c.Recv(transporttest.Ctx(t)); err == nil || errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Recv after the device dropped all links = %v, want a read error", err)
		}
	}
	// The device "boots" again and accepts new connections.
	c := dial(t, wsURL(d.srv)+"/rpc", transport.Options{})
	echo(t, c, "after reboot")
}

func TestHandlerRefusesPlainRequest(t *testing.T) {
	transporttest.LeakCheck(t)
	srv := quietServer(NewHandler(transporttest.NewEchoDevice(), transport.Options{}), false)
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/rpc")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("plain GET on the WebSocket handler: %d, want 400", resp.StatusCode)
	}
	srv.Client().CloseIdleConnections()
}

func TestHandlerAcceptsAnyOriginAndPicksSubprotocol(t *testing.T) {
	transporttest.LeakCheck(t)
	srv := quietServer(NewHandler(transporttest.NewEchoDevice(), transport.Options{}), false)
	defer srv.Close()
	hdr := http.Header{"Origin": {"https://evil.example"}}
	d := websocket.Dialer{Subprotocols: []string{"other", Subprotocol}}
	ws, resp, err := d.DialContext(transporttest.Ctx(t), wsURL(srv)+"/rpc", hdr)
	if err != nil {
		t.Fatalf("dial with a foreign Origin: %v", err)
	}
	resp.Body.Close()
	defer ws.Close()
	if ws.Subprotocol() != Subprotocol {
		t.Errorf("device chose subprotocol %q, want %q", ws.Subprotocol(), Subprotocol)
	}
	// The device's replies carry no trailing newline.
	if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"id":5,"method":"Test.Echo","params":1}`)); err != nil {
		t.Fatal(err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(transporttest.Timeout))
	typ, data, err := ws.ReadMessage()
	if err != nil {
		t.Fatal(err)
	}
	if typ != websocket.TextMessage || string(data) != `{"src":"testdev","id":5,"result":1}` {
		t.Errorf("reply %d %q", typ, data)
	}
}

func TestBadURL(t *testing.T) {
	for _, s := range []string{"http://h/rpc", "ws:///rpc", "ws:opaque"} {
		if _, err := Dial(transporttest.Ctx(t), transporttest.MustParseURL(t, s), transport.Options{}); !errors.Is(err, transport.ErrBadPort) {
			t.Errorf("Dial(%s) = %v, want ErrBadPort", s, err)
		}
	}
	if _, err := Dial(transporttest.Ctx(t), nil, transport.Options{}); err == nil {
		t.Error("Dial(nil) succeeded")
	}
}
