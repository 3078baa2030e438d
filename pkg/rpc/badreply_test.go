package rpc_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/gorilla/websocket"

	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
	httptransport "github.com/otactl/otactl/pkg/transport/http"
	"github.com/otactl/otactl/pkg/transport/mqtt"
	"github.com/otactl/otactl/pkg/transport/mqtt/mqtttest"
	"github.com/otactl/otactl/pkg/transport/serial"
	"github.com/otactl/otactl/pkg/transport/transporttest"
	"github.com/otactl/otactl/pkg/transport/ws"
)

// wantBadReply checks that err is the verdict "the device answered
// something that is not an RPC frame" for method, and not a link error
// (which is what a call left to time out would give).
func wantBadReply(t *testing.T, err error, method string, fragments ...string) {
	t.Helper()
	var br *rpc.BadReplyError
	var le *rpc.LinkError
	if !errors.As(err, &br) || !errors.Is(err, rpc.ErrNotRPC) || errors.As(err, &le) {
		t.Fatalf("%s: err = %v, want a *rpc.BadReplyError", method, err)
	}
	if br.Method != method || !strings.HasPrefix(err.Error(), method+": the device answered something that is not an RPC frame: ") {
		t.Errorf("message: %s", err)
	}
	for _, f := range fragments {
		if !strings.Contains(err.Error(), f) {
			t.Errorf("message misses %q: %s", f, err)
		}
	}
}

// wsDevice is a WebSocket "device" on loopback that answers each request
// by calling answer with the connection and the request.
func wsDevice(t *testing.T, answer func(c *websocket.Conn, req *frame.Frame, n int)) string {
	t.Helper()
	up := websocket.Upgrader{Subprotocols: []string{ws.Subprotocol}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for n := 1; ; n++ {
			_, data, err := c.ReadMessage()
			if err != nil {
				return
			}
			req, err := frame.Parse(data)
			if err != nil {
				return
			}
			answer(c, req, n)
		}
	}))
	t.Cleanup(srv.Close)
	return "ws" + strings.TrimPrefix(srv.URL, "http") + "/rpc"
}

func dialClient(t *testing.T, dial transport.DialFunc, port string) *rpc.Client {
	t.Helper()
	conn, err := dial(transporttest.Ctx(t), transporttest.MustParseURL(t, port), transport.Options{})
	if err != nil {
		t.Fatalf("dial %s: %v", port, err)
	}
	c := rpc.NewClient(conn, rpc.ClientOptions{})
	t.Cleanup(func() { c.Close() })
	return c
}

func reply(c *websocket.Conn, req *frame.Frame, result string) {
	b, _ := frame.Marshal(&frame.Frame{ID: req.ID, Src: "dev1", Result: json.RawMessage(result)})
	_ = c.WriteMessage(websocket.TextMessage, b)
}

// Over WebSocket, a message that is not a frame fails the one call in
// flight at once (before: dropped, and the call timed out as "no answer").
func TestWebSocketGarbageFailsTheCallInFlight(t *testing.T) {
	transporttest.LeakCheck(t)
	for _, garbage := range []string{"NaN", "<html>oops</html>", "[1,2,3]", `{"hello":"world"}`, "\xff\xfe"} {
		port := wsDevice(t, func(c *websocket.Conn, req *frame.Frame, n int) {
			if req.Method == "Bad" {
				_ = c.WriteMessage(websocket.TextMessage, []byte(garbage))
				return
			}
			reply(c, req, `"ok"`)
		})
		c := dialClient(t, ws.Dial, port)
		_, err := c.Call(transporttest.Ctx(t), "Bad", nil)
		wantBadReply(t, err, "Bad", "a WebSocket text message", port)
		// The link still works: the next call is answered.
		if res, err := c.Call(transporttest.Ctx(t), "Good", nil); err != nil || string(res) != `"ok"` {
			t.Fatalf("call after the garbage = %s, %v", res, err)
		}
	}
}

// With several calls in flight, one unreadable message fails them all: it
// cannot be told which of them it answered.
func TestWebSocketGarbageFailsEveryCallInFlight(t *testing.T) {
	transporttest.LeakCheck(t)
	const calls = 3
	port := wsDevice(t, func(c *websocket.Conn, req *frame.Frame, n int) {
		if n == calls {
			_ = c.WriteMessage(websocket.BinaryMessage, []byte("garbage"))
		}
	})
	c := dialClient(t, ws.Dial, port)
	errs := make(chan error, calls)
	for i := range calls {
		go func() {
			_, err := c.Call(transporttest.Ctx(t), fmt.Sprintf("M%d", i), nil)
			errs <- err
		}()
	}
	for range calls {
		err := <-errs
		var br *rpc.BadReplyError
		if !errors.As(err, &br) || !strings.Contains(err.Error(), `a WebSocket binary message "garbage" (not JSON)`) {
			t.Fatalf("call in flight = %v, want a BadReplyError", err)
		}
	}
}

// An oversized WebSocket reply fails the call (not a lost link).
func TestWebSocketOversizedReply(t *testing.T) {
	transporttest.LeakCheck(t)
	port := wsDevice(t, func(c *websocket.Conn, req *frame.Frame, n int) {
		reply(c, req, `"`+strings.Repeat("A", transport.DefaultMaxReplySize)+`"`)
	})
	c := dialClient(t, ws.Dial, port)
	_, err := c.Call(transporttest.Ctx(t), "Big", nil)
	wantBadReply(t, err, "Big", "larger than 65536 bytes")
}

// Over HTTP the unreadable answer belongs to its request.
func TestHTTPErrorStatusIsABadReply(t *testing.T) {
	transporttest.LeakCheck(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "boom", http.StatusInternalServerError)
	}))
	t.Cleanup(srv.Close)
	c := dialClient(t, httptransport.Dial, srv.URL+"/rpc")
	_, err := c.Call(transporttest.Ctx(t), "Sys.GetInfo", nil)
	wantBadReply(t, err, "Sys.GetInfo", `HTTP 500 Internal Server Error "boom"`)
}

// mqttRawDevice answers requests for id on the broker with whatever
// payload(req) returns, published on the request's reply topic.
func mqttRawDevice(t *testing.T, brokerURL, id string, payload func(req *frame.Frame) []byte) {
	t.Helper()
	o := paho.NewClientOptions().AddBroker("tcp://" + strings.TrimPrefix(brokerURL, "mqtt://")).
		SetClientID(fmt.Sprintf("rawdev-%d", time.Now().UnixNano())).SetAutoReconnect(false)
	cl := paho.NewClient(o)
	if tok := cl.Connect(); !tok.WaitTimeout(transporttest.Timeout) || tok.Error() != nil {
		t.Fatalf("raw device connect: %v", tok.Error())
	}
	t.Cleanup(func() { cl.Disconnect(100) })
	tok := cl.Subscribe(mqtt.RequestTopic(id), 1, func(cl paho.Client, m paho.Message) {
		req, err := frame.Parse(m.Payload())
		if err != nil {
			return
		}
		cl.Publish(req.Src+"/rpc", 1, false, payload(req))
	})
	if !tok.WaitTimeout(transporttest.Timeout) || tok.Error() != nil {
		t.Fatalf("raw device subscribe: %v", tok.Error())
	}
}

// Over MQTT, a payload on our own reply topic that is not a frame is the
// device's answer, unreadable: the call fails at once.
func TestMQTTGarbageFailsTheCallInFlight(t *testing.T) {
	bu := mqtttest.StartBroker(t)
	transporttest.LeakCheck(t)
	mqttRawDevice(t, bu, "garbler", func(req *frame.Frame) []byte { return []byte("NaN") })
	c := dialClient(t, mqtt.Dial, bu+"/garbler")
	_, err := c.Call(transporttest.Ctx(t), "Sys.GetInfo", nil)
	wantBadReply(t, err, "Sys.GetInfo", `an MQTT message on garbler/rpc-resp/`, `"NaN" (not JSON)`)
}

// serialRawDevice runs a device on a pty that answers the handshake and
// writes answer(req) raw for each request.
func serialRawDevice(t *testing.T, answer func(req *frame.Frame) string) string {
	t.Helper()
	m, slave, err := serial.OpenPTY("")
	if err != nil {
		t.Skipf("no pty: %v", err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		m.Close()
		<-done
	})
	dec := &serial.Decoder{
		OnHandshake: func() { _, _ = m.Write([]byte("\"\"\"\x04\"\"\"")) },
		OnFrame: func(b []byte) {
			if req, err := frame.Parse(b); err == nil {
				_, _ = m.Write([]byte(answer(req)))
			}
		},
	}
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := m.Read(buf)
			dec.Feed(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	return slave
}

// On serial, device log lines stay log output even when they look like a
// damaged frame; but a damaged frame that names the id of the call in
// flight is its reply: the call fails at once, saying so.
func TestSerialDamagedReply(t *testing.T) {
	transporttest.LeakCheck(t)
	slave := serialRawDevice(t, func(req *frame.Frame) string {
		good, _ := frame.Marshal(&frame.Frame{ID: req.ID, Src: "dev1", Result: json.RawMessage(`"ok"`)})
		switch req.Method {
		case "Good":
			// A log line shaped like a frame, for another request, first.
			return "\n\"\"\"{\"id\":12,\"result\":1}00000000\"\"\"\n" + string(serial.EncodeFrame(good))
		case "BadCRC":
			return fmt.Sprintf("\n\"\"\"%s00000000\"\"\"\n", good)
		}
		// Cut short by a newline (a device reset while it wrote): log
		// output, and the call waits for its real reply.
		return fmt.Sprintf("\n\"\"\"{\"id\":%d,\"result\":\"trunc\nets Jun  8 2016 00:22:57\r\n", req.ID) + string(serial.EncodeFrame(good))
	})
	c := dialClient(t, serial.Dial, "serial://"+slave)
	if res, err := c.Call(transporttest.Ctx(t), "Good", nil); err != nil || string(res) != `"ok"` {
		t.Fatalf("Good = %s, %v", res, err)
	}
	_, err := c.Call(transporttest.Ctx(t), "BadCRC", nil)
	wantBadReply(t, err, "BadCRC", "a serial frame", "(CRC mismatch)")
	if res, err := c.Call(transporttest.Ctx(t), "Truncated", nil); err != nil || string(res) != `"ok"` {
		t.Fatalf("a reply cut short by a newline was taken for the reply: %s, %v", res, err)
	}
	if res, err := c.Call(transporttest.Ctx(t), "Good", nil); err != nil || string(res) != `"ok"` {
		t.Fatalf("Good after damaged replies = %s, %v", res, err)
	}
}
