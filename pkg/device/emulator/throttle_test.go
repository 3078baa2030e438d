package emulator

import (
	"io"
	"net"
	"testing"
	"testing/synctest"
	"time"
)

// At 115200 baud 8N1 the line carries 11,520 bytes a second: 1,152 bytes
// take 100 ms of (fake) time each way, and Close unblocks a paced write.
func TestThrottledPacesLikeAUART(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := net.Pipe()
		th := newThrottled(a, 115200)
		go func() { _, _ = io.Copy(io.Discard, b) }()
		start := time.Now()
		if _, err := th.Write(make([]byte, 1152)); err != nil {
			t.Fatal(err)
		}
		if got := time.Since(start); got < 99*time.Millisecond || got > 101*time.Millisecond {
			t.Fatalf("1152 bytes took %v, want 100ms", got)
		}
		go func() { _, _ = b.Write(make([]byte, 576)) }()
		start = time.Now()
		n := 0
		for n < 576 {
			m, err := th.Read(make([]byte, 1024))
			if err != nil {
				t.Fatal(err)
			}
			n += m
		}
		if got := time.Since(start); got < 49*time.Millisecond || got > 51*time.Millisecond {
			t.Fatalf("reading 576 bytes took %v, want 50ms", got)
		}
		done := make(chan error)
		go func() { _, err := th.Write(make([]byte, 115200)); done <- err }()
		time.Sleep(time.Second)
		th.Close()
		b.Close()
		if err := <-done; err == nil {
			t.Fatal("write after Close succeeded")
		}
	})
}
