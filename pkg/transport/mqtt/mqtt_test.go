package mqtt

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/goleak"

	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/mqtt/mqtttest"
	"github.com/otactl/otactl/pkg/transport/transporttest"
)

const wait = transporttest.Timeout

// noLeaks registers a goroutine leak check that runs after every cleanup
// registered later in t (brokers, servers, connections). Goroutines running
// now are not counted.
func noLeaks(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, transporttest.LeakIgnores(ignore)...) })
}

// startMochi starts an in-process broker and registers a leak check that
// runs before the broker stops: closing the broker would otherwise end
// the goroutines of a client that failed to clean up, and hide the leak.
func startMochi(t *testing.T) string {
	t.Helper()
	u := mqtttest.StartBroker(t)
	noLeaks(t)
	return u
}

func mustURL(t testing.TB, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	return ctx
}

// serve starts the device side on brokerURL and closes it in t.Cleanup.
func serve(t *testing.T, brokerURL, deviceID string, h transport.Handler, opts transport.Options) *Server {
	t.Helper()
	s, err := Serve(ctxT(t), mustURL(t, brokerURL), deviceID, h, opts)
	if err != nil {
		t.Fatalf("Serve: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func dial(t *testing.T, devURL string, opts transport.Options) transport.Conn {
	t.Helper()
	c, err := Dial(ctxT(t), mustURL(t, devURL), opts)
	if err != nil {
		t.Fatalf("Dial %s: %v", devURL, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

var testIDs atomic.Int64

func echoCall(t testing.TB, c transport.Conn, v string) *frame.Frame {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	p, _ := json.Marshal(v)
	req := &frame.Frame{ID: 1<<40 + testIDs.Add(1), Method: transporttest.MethodEcho, Params: p}
	if err := c.Send(ctx, req); err != nil {
		t.Fatalf("send: %v", err)
	}
	for {
		f, err := c.Recv(ctx)
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		if f.ID != req.ID {
			continue
		}
		if string(f.Result) != string(p) {
			t.Fatalf("echo %s came back as %s", p, f.Result)
		}
		return f
	}
}

func startFunc(brokerURL func(t *testing.T) string) transporttest.StartFunc {
	return func(t *testing.T, h transport.Handler) *transporttest.Device {
		// Registered before the broker, the device and the connections,
		// so it runs after all of them are closed.
		noLeaks(t)
		bu := brokerURL(t)
		// A device id per test keeps runs on a shared broker apart.
		dev := randomID("testdev-")
		serve(t, bu, dev, h, transport.Options{})
		return &transporttest.Device{
			Dial: func(ctx context.Context, opts transport.Options) (transport.Conn, error) {
				return Dial(ctx, mustURL(t, bu+"/"+dev), opts)
			},
		}
	}
}

func TestConformanceMochi(t *testing.T) {
	transporttest.Run(t, startFunc(startMochi))
}

func TestConformanceMosquitto(t *testing.T) {
	bu := mqtttest.Mosquitto(t)
	transporttest.Run(t, startFunc(func(*testing.T) string { return bu }))
}

// message is one publish seen by a sniffer.
type message struct {
	topic    string
	payload  string
	qos      byte
	retained bool
}

// sniff subscribes a raw paho client to "#" and records every publish.
type sniffer struct {
	mu   sync.Mutex
	msgs []message
	cl   paho.Client
	t    tracker
}

func newSniffer(t *testing.T, brokerURL string) *sniffer {
	t.Helper()
	b, err := parseBroker(mustURL(t, brokerURL))
	if err != nil {
		t.Fatal(err)
	}
	s := &sniffer{}
	d := newDialer(ctxT(t), b, nil)
	po := clientOptions(b, randomID("sniffer"), d)
	po.SetOrderMatters(true) // record in arrival order; the callback does not block
	s.cl = paho.NewClient(po)
	if err := connect(d.ctx, s.cl, d, b); err != nil {
		t.Fatalf("sniffer: %v", err)
	}
	t.Cleanup(func() {
		s.t.shut()
		disconnect(s.cl)
		s.t.wait()
	})
	if err := subscribe(d.ctx, s.cl, "#", func(_ paho.Client, m paho.Message) {
		defer m.Ack()
		if !s.t.enter() {
			return
		}
		defer s.t.leave()
		s.mu.Lock()
		s.msgs = append(s.msgs, message{m.Topic(), string(m.Payload()), m.Qos(), m.Retained()})
		s.mu.Unlock()
	}, nil); err != nil {
		t.Fatalf("sniffer: %v", err)
	}
	return s
}

// waitFor polls until n messages were seen, and returns them.
func (s *sniffer) waitFor(t *testing.T, n int) []message {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		s.mu.Lock()
		got := append([]message(nil), s.msgs...)
		s.mu.Unlock()
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("saw %d MQTT messages, want %d: %+v", len(got), n, got)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (s *sniffer) publish(t *testing.T, topic, payload string) {
	t.Helper()
	if err := waitToken(ctxT(t), s.cl.Publish(topic, 1, false, payload), nil); err != nil {
		t.Fatalf("publish: %v", err)
	}
}

func TestTopicHelpers(t *testing.T) {
	if got := RequestTopic("esp32_ABCDEF"); got != "esp32_ABCDEF/rpc" {
		t.Errorf("RequestTopic = %q", got)
	}
	if got := ReplySrc("esp32_ABCDEF", "otactl-1"); got != "esp32_ABCDEF/rpc-resp/otactl-1" {
		t.Errorf("ReplySrc = %q", got)
	}
	if got := ReplyTopic("esp32_ABCDEF", "otactl-1"); got != "esp32_ABCDEF/rpc-resp/otactl-1/rpc" {
		t.Errorf("ReplyTopic = %q", got)
	}
}

// TestGoldenWire pins the exact topics, src/dst and payload bytes on the
// broker, as mos sends them.
func TestGoldenWire(t *testing.T) {
	noLeaks(t)
	bu := startMochi(t)
	sn := newSniffer(t, bu)
	serve(t, bu, "esp32_ABCDEF", transporttest.NewEchoDevice(), transport.Options{})
	c := dial(t, bu+"/esp32_ABCDEF", transport.Options{ClientID: "otactl-golden"})
	if id := c.(*conn).ClientID(); id != "otactl-golden" {
		t.Fatalf("client id = %q", id)
	}

	req := &frame.Frame{ID: 1711787588495, Src: "mos", Dst: "elsewhere", Method: transporttest.MethodEcho, Params: json.RawMessage(`{"x":1,"s":"Grüße"}`)}
	before := *req
	ctx := ctxT(t)
	if err := c.Send(ctx, req); err != nil {
		t.Fatal(err)
	}
	if req.Src != before.Src || req.Dst != before.Dst {
		t.Errorf("Send changed the caller's frame: src %q dst %q", req.Src, req.Dst)
	}
	resp, err := c.Recv(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if resp.ID != req.ID || resp.Dst != "esp32_ABCDEF/rpc-resp/otactl-golden" {
		t.Errorf("reply = %+v", resp)
	}

	want := []message{
		{
			topic:   "esp32_ABCDEF/rpc",
			payload: `{"src":"esp32_ABCDEF/rpc-resp/otactl-golden","dst":"esp32_ABCDEF","id":1711787588495,"method":"Test.Echo","params":{"x":1,"s":"Gr\u00fc\u00dfe"}}`,
			qos:     1,
		},
		{
			topic:   "esp32_ABCDEF/rpc-resp/otactl-golden/rpc",
			payload: `{"src":"testdev","dst":"esp32_ABCDEF/rpc-resp/otactl-golden","id":1711787588495,"result":{"x":1,"s":"Gr\u00fc\u00dfe"}}`,
			qos:     1,
		},
	}
	// MQTT orders messages per publisher only, so the request and the reply
	// may reach the sniffer in either order.
	sn.waitFor(t, len(want))
	// Nothing else should come (no duplicates): one more round trip, then
	// exactly two more messages.
	echoCall(t, c, "flush")
	got := sn.waitFor(t, len(want)+2)
	if len(got) != len(want)+2 {
		t.Errorf("saw %d messages, want %d: %+v", len(got), len(want)+2, got)
	}
	for _, w := range want {
		found := false
		for _, g := range got[:len(want)] {
			found = found || g == w
		}
		if !found {
			t.Errorf("message not seen on the broker:\nwant %+v\n got %+v", w, got[:len(want)])
		}
	}
}

func TestReplySrcDefaults(t *testing.T) {
	noLeaks(t)
	bu := startMochi(t)
	// A handler that leaves src and dst of its reply empty: Serve fills in
	// the device id and the request's src.
	h := transport.HandlerFunc(func(ctx context.Context, req *frame.Frame) *frame.Frame {
		return &frame.Frame{ID: req.ID, Result: json.RawMessage(`true`)}
	})
	serve(t, bu, "dev1", h, transport.Options{})
	c := dial(t, bu+"/dev1", transport.Options{ClientID: "cli"})
	ctx := ctxT(t)
	if err := c.Send(ctx, &frame.Frame{ID: 5, Method: "X"}); err != nil {
		t.Fatal(err)
	}
	f, err := c.Recv(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if f.Src != "dev1" || f.Dst != "dev1/rpc-resp/cli" || string(f.Result) != "true" {
		t.Fatalf("reply = %+v", f)
	}
}

func TestServerDropsForeignAndOversized(t *testing.T) {
	noLeaks(t)
	bu := startMochi(t)
	var calls atomic.Int64
	h := transport.HandlerFunc(func(ctx context.Context, req *frame.Frame) *frame.Frame {
		calls.Add(1)
		return &frame.Frame{ID: req.ID, Src: "dev1", Dst: req.Src, Result: json.RawMessage(`1`)}
	})
	serve(t, bu, "dev1", h, transport.Options{})
	sn := newSniffer(t, bu)

	big := `{"id":3,"src":"tester","method":"X","params":"` + strings.Repeat("A", frame.MaxSize) + `"}`
	sn.publish(t, "dev1/rpc", `{"id":1,"src":"tester","dst":"dev2","method":"X"}`)
	sn.publish(t, "dev1/rpc", big)
	sn.publish(t, "dev1/rpc", "not json")
	sn.publish(t, "dev1/rpc", `{"id":2,"src":"tester","dst":"dev1","method":"X"}`)
	sn.publish(t, "dev1/rpc", `{"id":4,"src":"tester","method":"X"}`)
	// The limit is on the frame without its src/dst routing: exactly
	// frame.MaxSize passes, one byte more is dropped.
	sn.publish(t, "dev1/rpc", sized(t, 5, frame.MaxSize))
	sn.publish(t, "dev1/rpc", sized(t, 6, frame.MaxSize+1))
	// Requests are handled concurrently: wait for the good replies, then
	// check that nothing else was answered or handled.
	deadline := time.Now().Add(wait)
	for {
		var ids []string
		for _, m := range sn.waitFor(t, 7) {
			if m.topic == "tester/rpc" {
				f, err := frame.Parse([]byte(m.payload))
				if err != nil {
					t.Fatalf("bad reply %q: %v", m.payload, err)
				}
				ids = append(ids, strconv.FormatInt(f.ID, 10))
			}
		}
		sort.Strings(ids)
		got := strings.Join(ids, ",")
		if got == "2,4,5" {
			break
		}
		if len(ids) > 3 || time.Now().After(deadline) {
			t.Fatalf("replies to ids %s, want 2,4,5", got)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := calls.Load(); n != 3 {
		t.Fatalf("handler called %d times, want 3 (foreign dst, oversized and junk must be dropped)", n)
	}
}

// sized returns a request frame with id whose size without its src and dst
// members is exactly n bytes.
func sized(t *testing.T, id int64, n int) string {
	t.Helper()
	f := &frame.Frame{ID: id, Src: "tester", Dst: "dev1", Method: "X", Params: json.RawMessage(`""`)}
	b, _ := frame.Marshal(f)
	pad := n - (len(b) - addressingSize(f))
	f.Params = json.RawMessage(`"` + strings.Repeat("A", pad) + `"`)
	b, _ = frame.Marshal(f)
	if got := len(b) - len(`,"src":"tester","dst":"dev1"`); got != n {
		t.Fatalf("built a %d-byte frame, want %d", got, n)
	}
	return string(b)
}

func TestCredentials(t *testing.T) {
	noLeaks(t)
	const user, pass = "fleet", "pa55-SECRET-word"
	bu := mqtttest.StartAuthBroker(t, user, pass)
	host := strings.TrimPrefix(bu, "mqtt://")
	good := "mqtt://" + user + ":" + pass + "@" + host

	serve(t, good, "dev1", transporttest.NewEchoDevice(), transport.Options{})
	// Credentials in the URL.
	echoCall(t, dial(t, good+"/dev1", transport.Options{}), "url creds")
	// The RPC credentials (Options.Creds) are the device's: they never go
	// to the broker, which then sees an anonymous client.
	if c, err := Dial(ctxT(t), mustURL(t, bu+"/dev1"), transport.Options{Creds: &transport.Credentials{User: user, Password: pass}}); err == nil {
		c.Close()
		t.Error("Dial with RPC credentials only was admitted by a broker that wants its own")
	} else if !strings.Contains(err.Error(), "refused an anonymous client") {
		t.Errorf("RPC credentials were sent to the broker: %v", err)
	}

	for _, tc := range []struct {
		name, url string
		creds     *transport.Credentials
		secret    string
		want      string
	}{
		{"wrong password", "mqtt://" + user + ":wrong-HUSH-pass@" + host + "/dev1", nil, "wrong-HUSH-pass", "wrong user name or password"},
		{"wrong user", "mqtt://intruder:" + pass + "@" + host + "/dev1", nil, pass, "wrong user name or password"},
		{"anonymous", bu + "/dev1", nil, "", "wants a user name and password"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Dial(ctxT(t), mustURL(t, tc.url), transport.Options{Creds: tc.creds})
			if err == nil {
				c.Close()
				t.Fatal("Dial succeeded with bad credentials")
			}
			msg := err.Error()
			if tc.secret != "" && strings.Contains(msg, tc.secret) {
				t.Errorf("error shows the password: %s", msg)
			}
			if !strings.Contains(msg, tc.want) {
				t.Errorf("error %q does not say %q", msg, tc.want)
			}
		})
	}
	// The device side explains refused credentials too.
	_, err := Serve(ctxT(t), mustURL(t, "mqtt://"+user+":dev-HUSH-pass@"+host), "dev2", transporttest.NewEchoDevice(), transport.Options{})
	if err == nil || strings.Contains(err.Error(), "dev-HUSH-pass") || !strings.Contains(err.Error(), "wrong user name or password") {
		t.Errorf("Serve with a bad password: %v", err)
	}
}

func TestClientIDsUnique(t *testing.T) {
	noLeaks(t)
	bu := startMochi(t)
	serve(t, bu, "dev1", transporttest.NewEchoDevice(), transport.Options{})
	a := dial(t, bu+"/dev1", transport.Options{})
	b := dial(t, bu+"/dev1", transport.Options{})
	ida, idb := a.(*conn).ClientID(), b.(*conn).ClientID()
	if ida == idb || !strings.HasPrefix(ida, "otactl-") || len(ida) > 23 {
		t.Fatalf("client ids %q and %q: want distinct otactl-… ids of at most 23 bytes", ida, idb)
	}
	// Both stay connected (a shared id would make the broker drop one) and
	// each gets only its own replies.
	echoCall(t, a, "a")
	echoCall(t, b, "b")
	echoCall(t, a, "a again")
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if f, err := b.Recv(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("b received %+v, %v: a's replies leaked to b", f, err)
	}
}

func TestDialErrors(t *testing.T) {
	noLeaks(t)
	// A port with nothing listening.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()

	for _, tc := range []struct {
		name, url string
		badPort   bool
		want      string
	}{
		{"no device id", "mqtt://127.0.0.1:1883", true, "no device id"},
		{"no device id slash", "mqtt://u:HUSH@127.0.0.1:1883/", true, "no device id"},
		{"bad port", "mqtt://u:HUSH@127.0.0.1:99999/dev", true, "bad broker port"},
		{"zero port", "mqtt://127.0.0.1:0/dev", true, "bad broker port"},
		{"no host", "mqtt:///dev", true, "no broker host"},
		{"scheme", "tcp://127.0.0.1/dev", true, "scheme"},
		{"wildcard device", "mqtt://127.0.0.1/dev+1", true, "wildcard"},
		{"closed port", "mqtt://u:HUSH@" + closed + "/dev", false, "cannot connect to MQTT broker"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, perr := url.Parse(tc.url)
			if perr != nil {
				t.Fatal(perr)
			}
			start := time.Now()
			c, err := Dial(ctxT(t), u, transport.Options{})
			if err == nil {
				c.Close()
				t.Fatal("Dial succeeded")
			}
			if time.Since(start) > 2*time.Second {
				t.Errorf("Dial took %v to fail", time.Since(start))
			}
			if errors.Is(err, transport.ErrBadPort) != tc.badPort {
				t.Errorf("errors.Is(%v, ErrBadPort) = %v, want %v", err, !tc.badPort, tc.badPort)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "HUSH") {
				t.Errorf("error shows the password: %v", err)
			}
		})
	}
	if _, err := Dial(ctxT(t), mustURL(t, "mqtt://127.0.0.1/dev"), transport.Options{ClientID: "a#b"}); err == nil || !strings.Contains(err.Error(), "wildcard") {
		t.Errorf("client id with a wildcard: %v", err)
	}
}

// TestDialHonoursCtx dials a listener that accepts and then never answers
// the MQTT CONNECT: ctx must end the dial.
func TestDialHonoursCtx(t *testing.T) {
	noLeaks(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns sync.WaitGroup
	conns.Add(1)
	go func() {
		defer conns.Done()
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 512)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { l.Close(); conns.Wait() })

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	c, err := Dial(ctx, mustURL(t, "mqtt://"+l.Addr().String()+"/dev"), transport.Options{})
	if err == nil {
		c.Close()
		t.Fatal("Dial to a silent broker succeeded")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Dial returned %v after its ctx ended", d)
	}

	// A ctx that is already done fails at once.
	done, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if _, err := Dial(done, mustURL(t, "mqtt://"+l.Addr().String()+"/dev"), transport.Options{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Dial with a cancelled ctx: %v", err)
	}
}

func TestTLS(t *testing.T) {
	noLeaks(t)
	bu, roots := mqtttest.StartTLSBroker(t)
	if !strings.HasPrefix(bu, "mqtts://") {
		t.Fatalf("TLS broker URL %q", bu)
	}
	conf := &tls.Config{RootCAs: roots}
	serve(t, bu, "dev1", transporttest.NewEchoDevice(), transport.Options{TLS: conf})
	echoCall(t, dial(t, bu+"/dev1", transport.Options{TLS: conf}), "over TLS")

	// Without the test CA the broker's certificate is not trusted.
	c, err := Dial(ctxT(t), mustURL(t, bu+"/dev1"), transport.Options{})
	if err == nil {
		c.Close()
		t.Fatal("Dial trusted a self-signed broker certificate")
	}
	if !strings.Contains(err.Error(), "certificate") {
		t.Errorf("error %q does not mention the certificate", err)
	}
	// A plain client cannot talk to the TLS port.
	c, err = Dial(ctxT(t), mustURL(t, strings.Replace(bu, "mqtts://", "mqtt://", 1)+"/dev1"), transport.Options{})
	if err == nil {
		c.Close()
		t.Fatal("plain MQTT to a TLS port succeeded")
	}
}

func TestDefaultPorts(t *testing.T) {
	for in, want := range map[string]string{
		"mqtt://broker/dev":         "broker:1883",
		"mqtts://broker/dev":        "broker:8883",
		"mqtt://broker:1884/dev":    "broker:1884",
		"mqtts://[::1]/dev":         "[::1]:8883",
		"MQTT://user:pw@broker/dev": "broker:1883",
	} {
		b, err := parseBroker(mustURL(t, in))
		if err != nil {
			t.Errorf("%s: %v", in, err)
			continue
		}
		if b.addr != want {
			t.Errorf("%s: addr %s, want %s", in, b.addr, want)
		}
	}
	b, _ := parseBroker(mustURL(t, "mqtt://url:pw@broker/dev"))
	if b.user != "url" || b.pass != "pw" {
		t.Errorf("URL creds not used: %+v", b)
	}
	if got := DeviceID(mustURL(t, "mqtt://b/esp32_ABCDEF/")); got != "esp32_ABCDEF" {
		t.Errorf("DeviceID = %q", got)
	}
}

// TestServeCloseAndRestart closes a server while a handler blocks (its ctx
// must end and Close must wait for it), then serves again under the same
// device id, as the emulator does on a reboot.
func TestServeCloseAndRestart(t *testing.T) {
	noLeaks(t)
	bu := startMochi(t)
	d := transporttest.NewEchoDevice()
	s := serve(t, bu, "dev1", d, transport.Options{})
	c := dial(t, bu+"/dev1", transport.Options{})
	ctx := ctxT(t)
	if err := c.Send(ctx, &frame.Frame{ID: 77, Method: transporttest.MethodBlock}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.Entered:
	case <-ctx.Done():
		t.Fatal("request never reached the device")
	}
	closed := make(chan struct{})
	go func() { s.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(wait):
		t.Fatal("Close did not return while a handler was blocked (handler ctx not cancelled?)")
	}
	s.Close() // idempotent

	// While the device is down nothing answers.
	p := &frame.Frame{ID: 78, Method: transporttest.MethodEcho, Params: json.RawMessage(`"lost"`)}
	if err := c.Send(ctx, p); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if f, err := c.Recv(short); err == nil {
		t.Fatalf("closed device answered: %+v", f)
	}

	serve(t, bu, "dev1", transporttest.NewEchoDevice(), transport.Options{})
	echoCall(t, c, "after reboot")
}

// TestServerReconnects restarts the broker under a device and a client: the
// client's Recv reports the lost link, and the device reconnects and
// subscribes again by itself.
func TestServerReconnects(t *testing.T) {
	noLeaks(t)
	b := mqtttest.Start(t, mqtttest.Config{})
	serve(t, b.URL, "dev1", transporttest.NewEchoDevice(), transport.Options{})
	c := dial(t, b.URL+"/dev1", transport.Options{})
	echoCall(t, c, "before")

	recvErr := make(chan error, 1)
	go func() {
		_, err := c.Recv(context.Background())
		recvErr <- err
	}()
	b.Close()
	select {
	case err := <-recvErr:
		if err == nil || errors.Is(err, transport.ErrClosed) || !strings.Contains(err.Error(), "lost") {
			t.Fatalf("Recv after the broker went away: %v", err)
		}
		if err := c.Send(ctxT(t), &frame.Frame{ID: 1, Method: "X"}); err == nil {
			t.Fatal("Send on a lost connection succeeded")
		}
	case <-time.After(wait):
		t.Fatal("Recv did not notice the broker going away")
	}

	b2 := mqtttest.Start(t, mqtttest.Config{Addr: b.Addr})
	// The device reconnects with back-off; poll with fresh clients until it
	// answers.
	deadline := time.Now().Add(wait)
	for {
		c2 := dial(t, b2.URL+"/dev1", transport.Options{})
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := c2.Send(ctx, &frame.Frame{ID: 9, Method: transporttest.MethodEcho, Params: json.RawMessage(`1`)})
		var f *frame.Frame
		if err == nil {
			f, err = c2.Recv(ctx)
		}
		cancel()
		c2.Close()
		if err == nil && f.ID == 9 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("device did not come back after the broker restarted: %v", err)
		}
	}
}

// TestSendHonoursCtx checks Send with a done ctx and Recv with a ctx
// deadline.
func TestSendRecvCtx(t *testing.T) {
	noLeaks(t)
	bu := startMochi(t)
	c := dial(t, bu+"/nobody", transport.Options{})
	done, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Send(done, &frame.Frame{ID: 1, Method: "X"}); !errors.Is(err, context.Canceled) {
		t.Errorf("Send with a cancelled ctx = %v", err)
	}
	short, cancel2 := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel2()
	if _, err := c.Recv(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Recv = %v, want DeadlineExceeded", err)
	}
	// Publishing to a device that does not exist is not an error (MQTT has
	// no receivers to check); the call just gets no answer.
	if err := c.Send(ctxT(t), &frame.Frame{ID: 2, Method: "X"}); err != nil {
		t.Errorf("Send = %v", err)
	}
}

// A connect that the broker refuses must detach the connection from ctx: the
// device side retries with one long-lived ctx, and every attempt would
// otherwise leave a callback holding its closed connection until Close.
func TestRefusedConnectReleasesCtx(t *testing.T) {
	noLeaks(t)
	bu := mqtttest.StartAuthBroker(t, "fleet", "right")
	b, err := parseBroker(mustURL(t, strings.Replace(bu, "mqtt://", "mqtt://fleet:wrong@", 1)))
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	d := newDialer(ctx, b, nil)
	cl := paho.NewClient(clientOptions(b, randomID("refused-"), d))
	if err := connect(ctx, cl, d, b); !errors.Is(err, transport.ErrAuth) {
		t.Fatalf("connect = %v, want a refusal", err)
	}
	d.mu.Lock()
	held := d.stop != nil
	d.mu.Unlock()
	if held {
		t.Fatal("a refused connection is still tied to ctx")
	}
}
