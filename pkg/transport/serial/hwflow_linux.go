package serial

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// sideFD is a second descriptor on a tty, used to change settings that
// go.bug.st/serial does not expose (termios belongs to the tty, not to the
// descriptor).
type sideFD struct{ fd int }

func openSide(path string) (*sideFD, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NOCTTY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return &sideFD{fd: fd}, nil
}

// enableRTSCTS turns on RTS/CTS hardware flow control.
func (s *sideFD) enableRTSCTS() error {
	t, err := unix.IoctlGetTermios(s.fd, unix.TCGETS)
	if err != nil {
		return fmt.Errorf("get terminal settings: %w", err)
	}
	t.Cflag |= unix.CRTSCTS
	if err := unix.IoctlSetTermios(s.fd, unix.TCSETS, t); err != nil {
		return fmt.Errorf("set terminal settings: %w", err)
	}
	return nil
}

func (s *sideFD) close() { unix.Close(s.fd) }
