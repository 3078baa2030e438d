package mqtt

import (
	"net"
	"sync"
	"testing"
)

// loopProxy is a TCP proxy on 127.0.0.1 in front of a broker, for tests
// that put a fault between a client and its broker. Each connection it
// accepts goes to its handle function (n counts them from 0), which
// relays it, or not, on goroutines started with run. The proxy closes
// every socket it accepted or dialled with cut and in t.Cleanup, and the
// cleanup waits for its goroutines.
type loopProxy struct {
	addr string
	l    net.Listener
	mu   sync.Mutex
	open []net.Conn
	wg   sync.WaitGroup
}

func startLoopProxy(t *testing.T, handle func(px *loopProxy, n int, c net.Conn)) *loopProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	px := &loopProxy{addr: l.Addr().String(), l: l}
	px.run(func() {
		for n := 0; ; n++ {
			c, err := l.Accept()
			if err != nil {
				return
			}
			px.track(c)
			handle(px, n, c)
		}
	})
	t.Cleanup(func() {
		l.Close()
		px.cut()
		px.wg.Wait()
	})
	return px
}

// run runs f on a goroutine the cleanup waits for.
func (px *loopProxy) run(f func()) {
	px.wg.Add(1)
	go func() {
		defer px.wg.Done()
		f()
	}()
}

func (px *loopProxy) track(c net.Conn) {
	px.mu.Lock()
	px.open = append(px.open, c)
	px.mu.Unlock()
}

// dial connects to addr for the client connection c; when that fails, c
// is closed.
func (px *loopProxy) dial(addr string, c net.Conn) (net.Conn, bool) {
	up, err := net.Dial("tcp", addr)
	if err != nil {
		c.Close()
		return nil, false
	}
	px.track(up)
	return up, true
}

// cut closes every connection through the proxy; new ones are still
// accepted.
func (px *loopProxy) cut() {
	px.mu.Lock()
	defer px.mu.Unlock()
	for _, c := range px.open {
		c.Close()
	}
	px.open = nil
}

// relay copies src to dst until either ends, then closes both.
func relay(dst, src net.Conn) { relayUntil(dst, src, nil) }

// relayUntil relays as relay does, but once stop is closed it reads
// nothing more from src and leaves both open (a peer that stopped
// reading: the sender's socket buffers fill up).
func relayUntil(dst, src net.Conn, stop <-chan struct{}) {
	buf := make([]byte, 4096)
	for {
		select {
		case <-stop:
			return
		default:
		}
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	dst.Close()
	src.Close()
}
