package mqtt

import (
	"net"
	"syscall"
)

// quickAckOn is whether quickAck does anything; BenchmarkRoundTrip turns it
// off to measure what it saves.
var quickAckOn = true

// quickAck makes the kernel acknowledge at once what arrives on c, instead
// of delaying the acknowledgement (up to 40 ms on Linux) in the hope of
// sending it along with data. A broker with Nagle's algorithm on
// (mosquitto's default) holds its next message to c until that
// acknowledgement comes, so without this every round trip through it took
// about 44 ms (docs/transports.md, "Round trips through mosquitto").
func quickAck(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok || !quickAckOn {
		return c
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	q := &quickAckConn{TCPConn: tc, raw: raw}
	q.ack()
	return q
}

// quickAckConn sets TCP_QUICKACK again after each read: Linux leaves
// quick-ack mode by itself as soon as the connection looks interactive (it
// sends data soon after receiving some), which an RPC link always does.
type quickAckConn struct {
	*net.TCPConn
	raw syscall.RawConn
}

func (c *quickAckConn) Read(p []byte) (int, error) {
	n, err := c.TCPConn.Read(p)
	if n > 0 {
		c.ack()
	}
	return n, err
}

// ack sets TCP_QUICKACK, which also sends at once an acknowledgement the
// kernel was holding back. A failure only costs latency: it is ignored.
func (c *quickAckConn) ack() {
	_ = c.raw.Control(func(fd uintptr) {
		_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK, 1)
	})
}
