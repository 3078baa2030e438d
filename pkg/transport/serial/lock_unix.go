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
	"time"

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
// lock file in dirs makes the port busy too while the process it names
// holds the port (lockLive); any other is stale and replaced.
//
// An error that is not ErrPortBusy comes from opening path (it does not
// exist, permission denied) and is for the caller to explain.
func lockPort(path string, dirs []string) (*portLock, error) {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		real = path
	}
	name := uucpName(real)
	dev := deviceID(real)
	if pid, file := uucpHolder(dirs, name, dev); pid > 0 {
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
		pid, holder := uucpHolder(dirs, name, dev)
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

// uucpHolder returns the process that a lock file name in one of dirs
// names while it holds the port dev (lockLive), and that file; 0 when none
// does. Stale files are removed when we may.
func uucpHolder(dirs []string, name string, dev *devID) (int, string) {
	for _, dir := range dirs {
		file := filepath.Join(dir, name)
		pid, err := readUUCP(file)
		if err != nil {
			continue
		}
		if lockLive(file, pid, dev) {
			return pid, file
		}
		os.Remove(file) // stale
	}
	return 0, ""
}

// lockGrace is how long a fresh lock file naming a live process counts as
// live even though that process does not have the port open (yet): the
// UUCP convention writes the lock file first and opens the port after.
const lockGrace = 5 * time.Second

// lockLive reports whether the lock file (naming pid) still guards the
// port dev. By the UUCP convention a lock file is live while the process
// it names is; but pts numbers and PIDs get reused, so a live process
// whose open files (/proc/PID/fd) do not include the port does not hold it,
// and its lock file is stale — unless the file is younger than lockGrace
// (its writer may be about to open the port). Where the open files cannot
// be read (no /proc, another user's process) or the port cannot be
// identified, a live process counts as the holder, as the convention has
// it (docs/transports.md, "Serial").
func lockLive(file string, pid int, dev *devID) bool {
	if pid <= 0 || !alive(pid) {
		return false
	}
	if dev == nil {
		return true
	}
	if fi, err := os.Stat(file); err == nil && time.Since(fi.ModTime()) < lockGrace {
		return true
	}
	holds, known := hasOpen(pid, dev)
	return holds || !known
}

// devID identifies a character device (its device number), so that any
// path to it (a symlink, /dev/serial/by-id/…) is recognised.
type devID struct{ rdev uint64 }

// deviceID returns the identity of the character device at path, or nil
// when path is not one.
func deviceID(path string) *devID {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR {
		return nil
	}
	return &devID{rdev: uint64(st.Rdev)}
}

// hasOpen reports whether process pid has the device dev open, from its
// /proc/PID/fd; known is false when that cannot be read.
func hasOpen(pid int, dev *devID) (holds, known bool) {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false, false
	}
	for _, e := range entries {
		var st unix.Stat_t
		if unix.Stat(filepath.Join(dir, e.Name()), &st) != nil {
			continue // closed meanwhile, or not ours to see
		}
		if st.Mode&unix.S_IFMT == unix.S_IFCHR && uint64(st.Rdev) == dev.rdev {
			return true, true
		}
	}
	return false, true
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
