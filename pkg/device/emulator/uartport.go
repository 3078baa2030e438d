package emulator

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"

	"github.com/otactl/otactl/pkg/transport/serial"
)

// uartPort is the emulator's end of its serial link for the listener's
// whole life (SerialListener): the pty master behind the device's transmit
// buffer (uartTX) and, with a baud rate, the UART's pace. One goroutine
// reads what the host sends and hands it to the running firmware's
// session, or drops it while the device is off: an MCU in reset does not
// read its UART, and what arrives meanwhile is lost.
type uartPort struct {
	link io.ReadWriteCloser
	room func() bool // ptyRoom of the master

	mu  sync.Mutex
	cur *uartSession
	err error // the read error that ended the link

	dropped atomic.Int64 // bytes the host sent while the device was off

	wmu sync.Mutex // one writer at a time: a boot log line, or a session

	done chan struct{} // closed when the reader ends
}

func newUARTPort(master io.ReadWriteCloser, baud int) *uartPort {
	var link io.ReadWriteCloser = newUARTTX(master)
	if baud > 0 {
		link = newThrottled(link, baud)
	}
	p := &uartPort{link: link, room: ptyRoom(master), done: make(chan struct{})}
	go p.read()
	return p
}

func (p *uartPort) read() {
	defer close(p.done)
	buf := make([]byte, 4096)
	for {
		n, err := p.link.Read(buf)
		if n > 0 {
			p.mu.Lock()
			s := p.cur
			p.mu.Unlock()
			if s == nil {
				p.dropped.Add(int64(n))
			} else {
				// Waits until the firmware has read it all, or its
				// session ended (then the rest is dropped).
				_, _ = s.pw.Write(buf[:n])
			}
		}
		if err != nil {
			p.mu.Lock()
			p.err = err
			s := p.cur
			p.mu.Unlock()
			if s != nil {
				s.pw.CloseWithError(err)
			}
			return
		}
	}
}

// attach starts a session for a booting firmware: it reads what the host
// sends from now on, and writes through the port, until it is closed.
func (p *uartPort) attach() *uartSession {
	pr, pw := io.Pipe()
	s := &uartSession{port: p, pr: pr, pw: pw}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		pw.CloseWithError(p.err)
	}
	p.cur = s
	return s
}

// log writes a log line of the booting firmware straight to the port
// (no session runs yet), as serial.Server.Log formats it: XON and XOFF
// removed, a line end added. It never waits: the line is dropped when
// nobody reads the port, as uartQueue.put does.
func (p *uartPort) log(line string) {
	if p.room != nil && !p.room() {
		return
	}
	b := make([]byte, 0, len(line)+1)
	for i := 0; i < len(line); i++ {
		if c := line[i]; c != serial.XON && c != serial.XOFF {
			b = append(b, c)
		}
	}
	if len(b) == 0 || b[len(b)-1] != '\n' {
		b = append(b, '\n')
	}
	_, _ = p.write(b)
}

func (p *uartPort) write(b []byte) (int, error) {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	return p.link.Write(b)
}

// close removes the pty (and its symlink) and waits for the reader.
func (p *uartPort) close() error {
	err := p.link.Close()
	<-p.done
	return err
}

// uartSession is one boot's view of the port: the io.ReadWriteCloser a
// serial.Server runs on. Close ends the session, not the port.
type uartSession struct {
	port *uartPort
	pr   *io.PipeReader
	pw   *io.PipeWriter

	mu     sync.Mutex
	closed bool
}

func (s *uartSession) Read(b []byte) (int, error) { return s.pr.Read(b) }

func (s *uartSession) Write(b []byte) (int, error) {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return 0, io.ErrClosedPipe
	}
	return s.port.write(b)
}

var errDeviceOff = errors.New("emulator: the device is off")

// Close detaches the session: the port drops what the host sends until
// the next boot attaches.
func (s *uartSession) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.port.mu.Lock()
	if s.port.cur == s {
		s.port.cur = nil
	}
	s.port.mu.Unlock()
	s.pr.CloseWithError(errDeviceOff)
	s.pw.CloseWithError(errDeviceOff)
	return nil
}
