package emulator

import (
	"io"
	"sync"
	"time"
)

// throttled paces a byte stream to a UART's speed: baud/10 bytes a second
// each way (8N1: ten bits a byte), so that transfers over the emulator's
// serial link take as long as over a real cable.
type throttled struct {
	rwc         io.ReadWriteCloser
	read, write *pacer
	closed      chan struct{}
	once        sync.Once
}

func newThrottled(rwc io.ReadWriteCloser, baud int) *throttled {
	rate := float64(baud) / 10
	closed := make(chan struct{})
	return &throttled{rwc: rwc, read: &pacer{rate: rate, closed: closed}, write: &pacer{rate: rate, closed: closed}, closed: closed}
}

func (t *throttled) Read(p []byte) (int, error) {
	n, err := t.rwc.Read(p)
	if n > 0 {
		t.read.wait(n) // the bytes arrive as fast as the line carries them
	}
	return n, err
}

func (t *throttled) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		n := min(len(p), 64)
		if !t.write.wait(n) {
			return written, io.ErrClosedPipe
		}
		m, err := t.rwc.Write(p[:n])
		written += m
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

func (t *throttled) Close() error {
	t.once.Do(func() { close(t.closed) })
	return t.rwc.Close()
}

// pacer spaces n-byte steps at rate bytes per second.
type pacer struct {
	rate   float64
	closed <-chan struct{}
	mu     sync.Mutex
	next   time.Time
}

// wait blocks until n more bytes fit the rate; false when closed.
func (p *pacer) wait(n int) bool {
	p.mu.Lock()
	now := time.Now()
	if p.next.Before(now) {
		p.next = now
	}
	p.next = p.next.Add(time.Duration(float64(n) / p.rate * float64(time.Second)))
	d := p.next.Sub(now)
	p.mu.Unlock()
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-p.closed:
		return false
	}
}
