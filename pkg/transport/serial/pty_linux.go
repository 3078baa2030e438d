package serial

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
)

// OpenPTY creates a pseudo-terminal for an emulated device: the master end
// is returned for Serve, and the slave device path is where a client (otactl,
// mos, a terminal program) opens the "serial port". The slave is put in raw
// mode, so the tty neither echoes nor translates CR/LF nor interprets
// XON/XOFF. If linkPath is not empty, a symlink linkPath -> slave path is
// created, replacing an existing symlink (a stale one from an earlier run);
// any other existing file there is an error.
//
// The slave stays open on this side until the master is closed, so clients
// can close and reopen the port without the master seeing end-of-file.
// Closing the master closes both ends and removes the symlink if it still
// points to this pty.
func OpenPTY(linkPath string) (master io.ReadWriteCloser, slavePath string, err error) {
	m, s, err := pty.Open()
	if err != nil {
		return nil, "", fmt.Errorf("create pty: %w", err)
	}
	slavePath = s.Name()
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	// pty.Open put the master in blocking mode (it calls Fd), where Close
	// does not unblock a pending Read. Re-open it non-blocking, so that it
	// goes through the runtime poller.
	fd, err := dupNonblock(m)
	m.Close()
	if err != nil {
		return nil, "", fmt.Errorf("create pty: %w", err)
	}
	mf := os.NewFile(uintptr(fd), "/dev/ptmx")
	defer func() {
		if err != nil {
			mf.Close()
		}
	}()
	if err := makeRaw(s); err != nil {
		return nil, "", fmt.Errorf("set pty %s to raw mode: %w", slavePath, err)
	}
	if linkPath != "" {
		if err := replaceSymlink(slavePath, linkPath); err != nil {
			return nil, "", err
		}
	}
	return &ptyMaster{File: mf, slave: s, slavePath: slavePath, link: linkPath}, slavePath, nil
}

func dupNonblock(f *os.File) (int, error) {
	var fd int
	var derr error
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	if err := rc.Control(func(old uintptr) {
		fd, derr = unix.FcntlInt(old, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, derr
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// makeRaw sets the tty to raw mode, like cfmakeraw(3).
func makeRaw(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var terr error
	err = rc.Control(func(fd uintptr) {
		t, err := unix.IoctlGetTermios(int(fd), unix.TCGETS)
		if err != nil {
			terr = err
			return
		}
		t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR |
			unix.IGNCR | unix.ICRNL | unix.IXON | unix.IXOFF | unix.IXANY
		t.Oflag &^= unix.OPOST
		t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
		t.Cflag &^= unix.CSIZE | unix.PARENB
		t.Cflag |= unix.CS8 | unix.CREAD | unix.CLOCAL
		t.Cc[unix.VMIN] = 1
		t.Cc[unix.VTIME] = 0
		terr = unix.IoctlSetTermios(int(fd), unix.TCSETS, t)
	})
	if err != nil {
		return err
	}
	return terr
}

// replaceSymlink points link at target, atomically replacing an existing
// symlink.
func replaceSymlink(target, link string) error {
	if fi, err := os.Lstat(link); err == nil && fi.Mode()&os.ModeSymlink == 0 {
		return fmt.Errorf("cannot link %s to the emulated serial port: it exists and is not a symlink; remove it or choose another path", link)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("cannot link %s to the emulated serial port: %w", link, err)
	}
	tmp := filepath.Join(filepath.Dir(link), fmt.Sprintf(".%s.%d.tmp", filepath.Base(link), os.Getpid()))
	os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return fmt.Errorf("cannot link %s to the emulated serial port: %w", link, err)
	}
	if err := os.Rename(tmp, link); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("cannot link %s to the emulated serial port: %w", link, err)
	}
	return nil
}

// ptyMaster is the master end of a pty that also holds the slave open.
type ptyMaster struct {
	*os.File
	slave     *os.File
	slavePath string
	link      string

	once sync.Once
	err  error
}

// Unread returns how many bytes written to the master wait in the port's
// input queue, not read yet by whoever has the port open (TIOCINQ on the
// slave): about 4096 when nobody reads it, and writes to the master then
// block once the pty's buffers are full. The emulator writes its log
// lines at once only while there is room.
func (p *ptyMaster) Unread() (int, error) {
	rc, err := p.slave.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var ierr error
	if err := rc.Control(func(fd uintptr) { n, ierr = unix.IoctlGetInt(int(fd), unix.TIOCINQ) }); err != nil {
		return 0, err
	}
	return n, ierr
}

// Close closes both ends and removes the symlink if it still points here.
func (p *ptyMaster) Close() error {
	p.once.Do(func() {
		p.err = p.File.Close()
		if err := p.slave.Close(); err != nil && p.err == nil {
			p.err = err
		}
		if p.link != "" {
			if t, err := os.Readlink(p.link); err == nil && t == p.slavePath {
				os.Remove(p.link)
			}
		}
	})
	return p.err
}
