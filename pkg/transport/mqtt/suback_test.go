package mqtt

import (
	"bufio"
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/mqtt/mqtttest"
)

// A broker that answers a SUBSCRIBE with a return code that grants
// nothing has subscribed nothing. mochi answers 0x91 ("packet identifier
// in use", an MQTT 5 code) even to a 3.1.1 client whenever the
// SUBSCRIBE's packet identifier equals that of a message it has in
// flight to the client (it keeps both in one map): under a fleet
// rollout's load a whole SUBSCRIBE of 8 devices was so answered, taken
// for a grant, and those devices' first call waited 20 s for replies
// the broker never routed ("no reply", unreachable). The session sends
// such a SUBSCRIBE again, with a new identifier, and the devices are
// reached.
func TestSessionsSubscribeAnsweredIDInUse(t *testing.T) {
	noLeaks(t)
	b := mqtttest.Start(t, mqtttest.Config{})
	ids := devIDs(3)
	for _, id := range ids {
		serve(t, b.URL, id, whoAmI(id), transport.Options{})
	}
	front, answered := answerFirstSubscribe(t, b.Addr, 0x91)
	p := newSessions(t, SessionsOptions{})
	// The first SUBSCRIBE (one or more of the three topics, as the dials
	// come) is answered 0x91.
	conns := make([]transport.Conn, len(ids))
	errs := make(chan error, len(ids))
	for i, id := range ids {
		go func() {
			c, err := p.Dial(ctxT(t), mustURL(t, "mqtt://"+front+"/"+id), transport.Options{})
			conns[i] = c
			errs <- err
		}()
	}
	for range ids {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range conns {
		t.Cleanup(func() { c.Close() })
	}
	if n := answered.Load(); n != 1 {
		t.Fatalf("the proxy answered %d SUBSCRIBEs itself, want 1", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i, id := range ids {
		if err := ask(ctx, conns[i], id, 0); err != nil {
			t.Errorf("after a SUBACK of 0x91: %v", err)
		}
	}
	if st := p.Stats(); st.Devices != len(ids) {
		t.Errorf("stats %+v, want %d devices subscribed", st, len(ids))
	}
}

// A SUBACK code that grants nothing and is not worth a retry fails the
// dial, with the code in the message, instead of leaving the device's
// calls to time out.
func TestSessionsSubscribeAnsweredUnknownCode(t *testing.T) {
	noLeaks(t)
	b := mqtttest.Start(t, mqtttest.Config{})
	serve(t, b.URL, "devA", whoAmI("devA"), transport.Options{})
	front, _ := answerFirstSubscribe(t, b.Addr, 0x87)
	p := newSessions(t, SessionsOptions{})
	_, err := p.Dial(ctxT(t), mustURL(t, "mqtt://"+front+"/devA"), transport.Options{})
	if err == nil || !strings.Contains(err.Error(), "0x87, which grants nothing") {
		t.Fatalf("dial answered 0x87: %v, want it refused with the code", err)
	}
}

// The device side subscribes to its request topic the same way: a SUBACK
// of 0x91 makes it subscribe again, and it is reached.
func TestServeSubscribeAnsweredIDInUse(t *testing.T) {
	noLeaks(t)
	b := mqtttest.Start(t, mqtttest.Config{})
	front, answered := answerFirstSubscribe(t, b.Addr, 0x91)
	serve(t, "mqtt://"+front, "devA", whoAmI("devA"), transport.Options{})
	if n := answered.Load(); n != 1 {
		t.Fatalf("the proxy answered %d SUBSCRIBEs itself, want 1", n)
	}
	c := dial(t, b.URL+"/devA", transport.Options{})
	if err := ask(ctxT(t), c, "devA", 0); err != nil {
		t.Fatal(err)
	}
}

func TestSubackVerdict(t *testing.T) {
	for _, tc := range []struct {
		code         byte
		ok           bool
		granted      bool
		again        bool
		errSubstring string
	}{
		{code: 0x00, ok: true, granted: true},
		{code: 0x01, ok: true, granted: true},
		{code: 0x02, ok: true, granted: true},
		{code: 0x80, ok: true, errSubstring: "refused the subscription"},
		{code: 0x91, ok: true, again: true, errSubstring: "packet identifier was in use"},
		{code: 0x03, ok: true, errSubstring: "0x03, which grants nothing"},
		{code: 0x87, ok: true, errSubstring: "0x87, which grants nothing"},
		{ok: false, errSubstring: "gave no return code"},
	} {
		again, err := subackVerdict("t/rpc", tc.code, tc.ok)
		if (err == nil) != tc.granted || again != tc.again || (err != nil && !strings.Contains(err.Error(), tc.errSubstring)) {
			t.Errorf("code 0x%02x (ok %v): again %v, err %v", tc.code, tc.ok, again, err)
		}
	}
}

// answerFirstSubscribe relays TCP connections to the broker at addr; it
// answers the first SUBSCRIBE of the first connection itself, with a
// SUBACK giving every topic code, and does not pass it on (relaying all
// else). answered counts the SUBSCRIBEs it answered.
func answerFirstSubscribe(t *testing.T, addr string, code byte) (front string, answered *atomic.Int32) {
	t.Helper()
	answered = new(atomic.Int32)
	px := startLoopProxy(t, func(px *loopProxy, k int, c net.Conn) {
		up, ok := px.dial(addr, c)
		if !ok {
			return
		}
		// Both directions write to c: the broker's packets and the
		// proxy's SUBACKs, each a whole packet at a time.
		toClient := make(chan []byte, 16)
		px.run(func() { // broker to client
			defer close(toClient)
			r := bufio.NewReader(up)
			for {
				pkt, err := readMQTTPacket(r)
				if err != nil {
					return
				}
				toClient <- pkt
			}
		})
		fake := make(chan []byte, 4)
		px.run(func() {
			defer c.Close()
			for {
				select {
				case pkt, ok := <-toClient:
					if !ok {
						return
					}
					if _, err := c.Write(pkt); err != nil {
						return
					}
				case pkt := <-fake:
					if _, err := c.Write(pkt); err != nil {
						return
					}
				}
			}
		})
		px.run(func() { // client to broker
			defer up.Close()
			r := bufio.NewReader(c)
			for {
				pkt, err := readMQTTPacket(r)
				if err != nil {
					return
				}
				if pkt[0]>>4 == 8 && k == 0 && answered.Load() == 0 {
					answered.Add(1)
					fake <- suback(t, pkt, code)
					continue
				}
				if _, err := up.Write(pkt); err != nil {
					return
				}
			}
		})
	})
	return px.addr, answered
}

// suback is the SUBACK answering the SUBSCRIBE packet sub with code for
// each of its topics.
func suback(t *testing.T, sub []byte, code byte) []byte {
	// Fixed header, remaining length (1 to 4 bytes), then the packet id
	// and (length-prefixed topic, QoS) pairs.
	i := 1
	for sub[i]&0x80 != 0 {
		i++
	}
	body := sub[i+1:]
	id, filters := body[:2], body[2:]
	var codes []byte
	for len(filters) > 0 {
		if len(filters) < 3 {
			t.Errorf("malformed SUBSCRIBE % x", sub)
			break
		}
		l := int(filters[0])<<8 | int(filters[1])
		filters = filters[2+l+1:]
		codes = append(codes, code)
	}
	// A remaining length below 128 takes one byte: 2 + at most 8 codes.
	return append([]byte{0x90, byte(2 + len(codes)), id[0], id[1]}, codes...)
}
