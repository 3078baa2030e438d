//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package serial

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// portLock is what a Dial holds while its port is open: an exclusive
// flock(2) on the device node, and a UUCP lock file where the lock
// directory lets us write one. Release undoes both; if the process dies,
// the kernel drops the flock and the next opener finds the lock file
// stale.
type portLock struct {
	f    *os.File
	uucp string // the lock file we created, or ""
}

// lockPort takes the locks for the device at path before it is opened as a
// serial port, so that a second opener fails at once, root included
// (root is not stopped by the TIOCEXCL that go.bug.st/serial sets). A
// lock file in dirs that names a live process other than this one makes
// the port busy too; one naming a dead process is stale and replaced.
//
// An error that is not ErrPortBusy comes from opening path (it does not
// exist, permission denied) and is for the caller to explain.
func lockPort(path string, dirs []string) (*portLock, error) {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		real = path
	}
	name := uucpName(real)
	if pid, file := uucpHolder(dirs, name); pid > 0 {
		return nil, busyError(path, pid, "holds lock file "+file)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOCTTY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.EBUSY) {
			return nil, busyError(path, 0, "it is in exclusive mode")
		}
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		pid := flockHolder(fd)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, busyError(path, pid, "holds an flock on it")
		}
		return nil, fmt.Errorf("lock serial port %s: %w", path, err)
	}
	l := &portLock{f: f}
	file, err := createUUCP(dirs, name)
	if errors.Is(err, ErrPortBusy) {
		// Another program wrote its lock file between our check and now.
		l.release()
		pid, holder := uucpHolder(dirs, name)
		return nil, busyError(path, pid, "holds lock file "+holder)
	}
	l.uucp = file
	return l, nil
}

// release drops the flock and removes the lock file we created.
func (l *portLock) release() {
	if l == nil {
		return
	}
	if l.uucp != "" {
		if pid, err := readUUCP(l.uucp); err == nil && pid == os.Getpid() {
			os.Remove(l.uucp)
		}
	}
	l.f.Close() // closing the descriptor drops the flock
}

// uucpHolder returns the live process that a lock file name in one of dirs
// names, and that file; 0 when none does. Stale files (a dead process, no
// PID) are removed when we may.
func uucpHolder(dirs []string, name string) (int, string) {
	for _, dir := range dirs {
		file := filepath.Join(dir, name)
		pid, err := readUUCP(file)
		if err != nil {
			continue
		}
		if pid > 0 && alive(pid) {
			return pid, file
		}
		os.Remove(file) // stale
	}
	return 0, ""
}

// createUUCP writes our PID to dir/name in the first of dirs that exists.
// It returns "" when none lets us (no such directory, read-only, not
// allowed): the flock is what protects the port; the file only tells
// programs that look for lock files. ErrPortBusy means another process
// created the file first.
func createUUCP(dirs []string, name string) (string, error) {
	for _, dir := range dirs {
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			continue
		}
		file := filepath.Join(dir, name)
		f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if errors.Is(err, fs.ErrExist) {
			return "", ErrPortBusy
		}
		if err != nil {
			return "", nil
		}
		_, werr := fmt.Fprintf(f, "%10d\n", os.Getpid())
		if cerr := f.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			os.Remove(file)
			return "", nil
		}
		return file, nil
	}
	return "", nil
}

// alive reports whether process pid exists (it may belong to another user).
func alive(pid int) bool {
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

// flockHolder returns the PID holding an flock on the file of fd, from
// /proc/locks (Linux), or 0 when it cannot tell.
func flockHolder(fd int) int {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0
	}
	f, err := os.Open("/proc/locks")
	if err != nil {
		return 0
	}
	defer f.Close()
	want := fmt.Sprintf("%02x:%02x:%d", unix.Major(uint64(st.Dev)), unix.Minor(uint64(st.Dev)), st.Ino)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "1: FLOCK  ADVISORY  WRITE 1234 00:05:3 0 EOF"
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[1] != "FLOCK" || fields[5] != want {
			continue
		}
		if pid, err := strconv.Atoi(fields[4]); err == nil {
			return pid
		}
	}
	return 0
}
