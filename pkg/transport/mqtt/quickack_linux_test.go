package mqtt

import (
	"context"
	"io"
	"net"
	"syscall"
	"testing"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// An RPC link sends soon after it receives, so Linux puts it in its
// "interactive" mode, where it delays acknowledgements; quickAck must take
// it out of that mode after every read, not once.
func TestQuickAckAfterEachRead(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		s, err := ln.Accept()
		if err != nil {
			return
		}
		defer s.Close()
		io.Copy(s, s) // echo until the client closes
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	q := quickAck(c)
	defer q.Close()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	quick := func() int {
		var v int
		var gerr error
		if err := raw.Control(func(fd uintptr) {
			v, gerr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK)
		}); err != nil {
			t.Fatal(err)
		}
		if gerr != nil {
			t.Fatal(gerr)
		}
		return v
	}
	buf := make([]byte, 1)
	for i := range 20 {
		if _, err := q.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(q, buf); err != nil {
			t.Fatal(err)
		}
		if quick() != 1 {
			t.Fatalf("after read %d: TCP_QUICKACK is off: the kernel may hold this link's acknowledgements back", i+1)
		}
	}
}

// Every connection to a broker, otactl's and the emulated devices', is
// opened by ctxDialer.open: it must come with quick acknowledgements.
func TestBrokerConnectionsQuickAck(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d := newDialer(context.Background(), &broker{addr: ln.Addr().String(), host: "127.0.0.1"}, nil)
	c, err := d.open(nil, paho.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d.release()
	if _, ok := c.(*bufferedConn).Conn.(*quickAckConn); !ok {
		t.Fatalf("the broker connection is a %T without quick acknowledgements", c.(*bufferedConn).Conn)
	}
}
