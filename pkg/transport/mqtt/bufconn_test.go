package mqtt

import (
	"bytes"
	"net"
	"testing"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

// countingConn counts the reads from the network: each is a system call.
type countingConn struct {
	net.Conn
	src   *bytes.Reader
	reads int
}

func (c *countingConn) Read(p []byte) (int, error) {
	c.reads++
	return c.src.Read(p)
}

// paho reads an MQTT packet's header one byte at a time: through the
// connection d.open hands it, packets that arrive together cost one read
// from the network between them, not three each; a body larger than the
// buffer still arrives whole.
func TestBrokerConnReadsBuffered(t *testing.T) {
	var wire bytes.Buffer
	const n = 10
	for i := range n {
		p := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
		p.TopicName, p.Qos, p.MessageID = "dev1/rpc", 1, uint16(i+1)
		p.Payload = []byte(`{"id":1,"src":"otactl","method":"Sys.GetInfo"}`)
		if err := p.Write(&wire); err != nil {
			t.Fatal(err)
		}
	}
	big := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	big.TopicName, big.Payload = "dev1/rpc", bytes.Repeat([]byte("x"), 3*readBufferSize)
	if err := big.Write(&wire); err != nil {
		t.Fatal(err)
	}
	cc := &countingConn{src: bytes.NewReader(wire.Bytes())}
	conn := newBufferedConn(cc)
	for i := range n {
		cp, err := packets.ReadPacket(conn)
		if err != nil {
			t.Fatal(err)
		}
		if got := cp.(*packets.PublishPacket).MessageID; got != uint16(i+1) {
			t.Fatalf("packet %d has id %d", i+1, got)
		}
	}
	cp, err := packets.ReadPacket(conn)
	if err != nil {
		t.Fatal(err)
	}
	if got := cp.(*packets.PublishPacket).Payload; !bytes.Equal(got, big.Payload) {
		t.Fatalf("the big packet's payload is %d bytes, want %d", len(got), len(big.Payload))
	}
	// 10 small packets in one read (they fit the buffer), the big one in
	// at most three: what is buffered, the rest, and the buffer's refill.
	if cc.reads > 4 {
		t.Fatalf("%d reads from the network for %d packets", cc.reads, n+1)
	}
}
