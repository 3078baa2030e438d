package mqtt

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/mqtt/mqtttest"
)

// A SUBSCRIBE that the broker connection takes and never answers, while
// the TCP connection stands (the broker went away and no FIN or RST
// reached us; the fault matrix's broker restart hit this under load):
// the dial that waited for it fails at its deadline, and the next dial
// must not join the same broker connection and wait on the same
// SUBSCRIBE until its own deadline (a push's every reconnect attempt
// failed so for its whole reconnect time, exit 5). It connects afresh
// and gets through; the device already reachable over the old
// connection stays reachable, and the old connection ends with its last
// device connection.
func TestSessionsUnansweredSubscribe(t *testing.T) {
	noLeaks(t)
	b := mqtttest.Start(t, mqtttest.Config{})
	serve(t, b.URL, "devA", whoAmI("devA"), transport.Options{})
	serve(t, b.URL, "devB", whoAmI("devB"), transport.Options{})
	// The first broker connection loses its second SUBSCRIBE (devB's).
	front, swallowed := swallowSubscribe(t, b.Addr, 2)
	p := newSessions(t, SessionsOptions{})
	brokerURL := "mqtt://" + front

	a := dialVia(t, p, brokerURL+"/devA", transport.Options{})
	if err := ask(ctxT(t), a, "devA", 0); err != nil {
		t.Fatal(err)
	}

	// devB's dial gives up once its SUBSCRIBE is lost: its deadline.
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-swallowed:
		case <-time.After(wait):
		}
		cancel()
	}()
	_, err := p.Dial(ctx, mustURL(t, brokerURL+"/devB"), transport.Options{})
	cancel()
	if err == nil || !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "subscribe to MQTT topic") {
		t.Fatalf("dial whose SUBSCRIBE went unanswered: %v, want the subscribe cut off by its ctx", err)
	}

	// The next dial connects afresh instead of waiting on that SUBSCRIBE.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	c, err := p.Dial(ctx2, mustURL(t, brokerURL+"/devB"), transport.Options{})
	if err != nil {
		t.Fatalf("dial after an unanswered SUBSCRIBE: %v", err)
	}
	if err := ask(ctx2, c, "devB", 1); err != nil {
		t.Fatal(err)
	}
	if n := b.Connects("otactl-"); n != 2 {
		t.Errorf("%d broker connections, want 2 (a new one after the unanswered SUBSCRIBE)", n)
	}
	// devA, on the old connection, is still served; the old connection
	// ends with devA's connection.
	if err := ask(ctxT(t), a, "devA", 2); err != nil {
		t.Fatal(err)
	}
	c2 := dialVia(t, p, brokerURL+"/devA", transport.Options{})
	if err := ask(ctxT(t), c2, "devA", 3); err != nil {
		t.Fatal(err)
	}
	if n := b.Connects("otactl-"); n != 2 {
		t.Errorf("%d broker connections, want 2 (devA's new dial joins the new one)", n)
	}
	a.Close()
	waitClients(t, b, "otactl-", 1)
	c.Close()
}

// swallowSubscribe relays TCP connections to addr; on the first one it
// drops the n-th SUBSCRIBE the client sends (and relays all else, so the
// connection stays up and answers pings). swallowed is closed when it did.
func swallowSubscribe(t *testing.T, addr string, n int) (front string, swallowed <-chan struct{}) {
	t.Helper()
	done := make(chan struct{})
	px := startLoopProxy(t, func(px *loopProxy, k int, c net.Conn) {
		up, ok := px.dial(addr, c)
		if !ok {
			return
		}
		drop := 0
		if k == 0 {
			drop = n
		}
		px.run(func() { relay(c, up) }) // broker to client: as is
		px.run(func() {                 // client to broker: packet by packet
			defer up.Close()
			r := bufio.NewReader(c)
			subs := 0
			for {
				pkt, err := readMQTTPacket(r)
				if err != nil {
					return
				}
				if pkt[0]>>4 == 8 { // SUBSCRIBE
					subs++
					if subs == drop {
						close(done)
						continue
					}
				}
				if _, err := up.Write(pkt); err != nil {
					return
				}
			}
		})
	})
	return px.addr, done
}

// readMQTTPacket reads one whole MQTT packet: the fixed header, the
// remaining length (1 to 4 bytes) and that many bytes.
func readMQTTPacket(r *bufio.Reader) ([]byte, error) {
	first, err := r.ReadByte()
	if err != nil {
		return nil, err
	}
	pkt := []byte{first}
	size, shift := 0, 0
	for i := 0; ; i++ {
		if i == 4 {
			return nil, errors.New("malformed remaining length")
		}
		b, err := r.ReadByte()
		if err != nil {
			return nil, err
		}
		pkt = append(pkt, b)
		size |= int(b&0x7f) << shift
		shift += 7
		if b&0x80 == 0 {
			break
		}
	}
	body := make([]byte, size)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	return append(pkt, body...), nil
}
