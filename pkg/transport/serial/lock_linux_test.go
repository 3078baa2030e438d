//go:build linux

package serial

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/transport"
)

// dialLocked dials the pty of d with UUCP lock files in lockDirs.
func (d *ptyDevice) dialLocked(lockDirs []string) (transport.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	cfg := portConfig{path: d.slave, baud: DefaultBaudRate, lockDirs: lockDirs}
	return dialConfig(ctx, cfg, transport.Options{})
}

func wantBusy(t *testing.T, err error, path string, pid int, how string) {
	t.Helper()
	if !errors.Is(err, ErrPortBusy) {
		t.Fatalf("second open = %v, want ErrPortBusy", err)
	}
	want := fmt.Sprintf("port busy: another program has %s open (PID %d", path, pid)
	if !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), how) {
		t.Fatalf("message %q, want it to start with %q and say %q", err, want, how)
	}
}

// A second opener of a port in use fails at once, even as root (which
// TIOCEXCL does not stop): the flock on the device stops it, and the lock
// file names the holder. Close releases both.
func TestSecondOpenerIsRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		dirs func(t *testing.T) []string
		how  string
	}{
		{"flock only", func(*testing.T) []string { return nil }, "holds an flock on it"},
		{"flock and lock file", func(t *testing.T) []string { return []string{t.TempDir()} }, "holds lock file "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev := startPTYDevice(t, transport.Options{})
			dirs := tc.dirs(t)
			c, err := dev.dialLocked(dirs)
			if err != nil {
				t.Fatalf("first open: %v", err)
			}
			if len(dirs) > 0 {
				file := filepath.Join(dirs[0], uucpName(dev.slave))
				b, err := os.ReadFile(file)
				if err != nil || string(b) != fmt.Sprintf("%10d\n", os.Getpid()) {
					t.Fatalf("lock file %s = %q, %v; want our PID in HDB format", file, b, err)
				}
			}
			_, err = dev.dialLocked(dirs)
			wantBusy(t, err, dev.slave, os.Getpid(), tc.how)
			call(t, c, 1, `"still mine"`) // the holder is not disturbed

			c.Close()
			if len(dirs) > 0 {
				if _, err := os.Stat(filepath.Join(dirs[0], uucpName(dev.slave))); !os.IsNotExist(err) {
					t.Fatalf("lock file left after Close: %v", err)
				}
			}
			c, err = dev.dialLocked(dirs)
			if err != nil {
				t.Fatalf("open after Close: %v", err)
			}
			call(t, c, 2, `"mine now"`)
			c.Close()
		})
	}
}

// age makes a lock file older than lockGrace, as one left from long ago.
func age(t *testing.T, file string) {
	t.Helper()
	old := time.Now().Add(-2 * lockGrace)
	if err := os.Chtimes(file, old, old); err != nil {
		t.Fatal(err)
	}
}

// startSleeper starts a process that lives until the test ends, with stdin
// from in (nil: none); it holds no port unless in is one.
func startSleeper(t *testing.T, in *os.File) *exec.Cmd {
	t.Helper()
	c := exec.Command("sleep", "60")
	if in != nil {
		c.Stdin = in
	}
	if err := c.Start(); err != nil {
		t.Skipf("cannot start sleep: %v", err)
	}
	t.Cleanup(func() { c.Process.Kill(); c.Wait() })
	return c
}

func writeLock(t *testing.T, file string, pid int) {
	t.Helper()
	if err := os.WriteFile(file, fmt.Appendf(nil, "%10d\n", pid), 0o644); err != nil {
		t.Fatal(err)
	}
}

// A lock file makes the port busy, naming its process, while that process
// has the port open (as minicom does: a lock file and no flock), also when
// the file is old; one naming a dead process is stale and replaced.
func TestUUCPLockFiles(t *testing.T) {
	dev := startPTYDevice(t, transport.Options{})
	dir := t.TempDir()
	file := filepath.Join(dir, uucpName(dev.slave))

	port, err := os.OpenFile(dev.slave, os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	holder := startSleeper(t, port)
	port.Close() // only the holder has it open now
	writeLock(t, file, holder.Process.Pid)
	age(t, file)
	_, err = dev.dialLocked([]string{dir})
	wantBusy(t, err, dev.slave, holder.Process.Pid, "(sleep) holds lock file "+file)

	holder.Process.Kill()
	holder.Wait()
	c, err := dev.dialLocked([]string{dir})
	if err != nil {
		t.Fatalf("open with a stale lock file: %v", err)
	}
	defer c.Close()
	if b, _ := os.ReadFile(file); strings.TrimSpace(string(b)) != strconv.Itoa(os.Getpid()) {
		t.Fatalf("stale lock file not replaced: %q", b)
	}
}

// A lock file naming a live process that does not have the port open is
// stale (the pts number, or the PID, was reused since it was written): the
// port is not busy and the file is replaced. A fresh one (younger than
// lockGrace) is trusted, as its writer may be about to open the port.
func TestLockFileOfProcessWithoutThePort(t *testing.T) {
	dev := startPTYDevice(t, transport.Options{})
	dir := t.TempDir()
	file := filepath.Join(dir, uucpName(dev.slave))
	// A live process that holds another port, not this one.
	other := startPTYDevice(t, transport.Options{})
	otherPort, err := os.OpenFile(other.slave, os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	sleeper := startSleeper(t, otherPort)
	otherPort.Close()

	writeLock(t, file, sleeper.Process.Pid)
	_, err = dev.dialLocked([]string{dir})
	wantBusy(t, err, dev.slave, sleeper.Process.Pid, "(sleep) holds lock file "+file)

	age(t, file)
	c, err := dev.dialLocked([]string{dir})
	if err != nil {
		t.Fatalf("open with a lock file of a process that does not hold the port: %v", err)
	}
	call(t, c, 4, `"not busy"`)
	if b, _ := os.ReadFile(file); strings.TrimSpace(string(b)) != strconv.Itoa(os.Getpid()) {
		t.Fatalf("stale lock file not replaced: %q", b)
	}
	c.Close()
}

func TestUUCPName(t *testing.T) {
	for in, want := range map[string]string{"/dev/ttyUSB0": "LCK..ttyUSB0", "/dev/pts/3": "LCK..pts_3", "/tmp/x/link": "LCK..tmp_x_link"} {
		if got := uucpName(in); got != want {
			t.Errorf("uucpName(%s) = %s, want %s", in, got, want)
		}
	}
}

// lockHolderEnv makes the test binary a process that opens a port and holds
// it until killed (TestLockHolderProcess).
const lockHolderEnv = "OTACTL_TEST_LOCK_HOLDER"

func TestLockHolderProcess(t *testing.T) {
	spec := os.Getenv(lockHolderEnv)
	if spec == "" {
		t.Skip("helper process for TestCrashedHolderReleasesThePort")
	}
	path, dir, _ := strings.Cut(spec, "|")
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, err := dialConfig(ctx, portConfig{path: path, baud: DefaultBaudRate, lockDirs: []string{dir}}, transport.Options{})
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	defer c.Close()
	fmt.Println("held")
	select {} // until killed
}

// A holder that dies (kill -9: no Close) leaves nothing that blocks the
// port: the kernel drops its flock, and its lock file is stale.
func TestCrashedHolderReleasesThePort(t *testing.T) {
	dev := startPTYDevice(t, transport.Options{})
	dir := t.TempDir()
	holder := exec.Command(os.Args[0], "-test.run=^TestLockHolderProcess$")
	holder.Env = append(os.Environ(), lockHolderEnv+"="+dev.slave+"|"+dir)
	out, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	line, _ := bufio.NewReader(out).ReadString('\n')
	if line != "held\n" {
		t.Fatalf("holder process: %q", line)
	}
	age(t, filepath.Join(dir, uucpName(dev.slave))) // live because it holds the port
	_, err = dev.dialLocked([]string{dir})
	wantBusy(t, err, dev.slave, holder.Process.Pid, "holds lock file")
	// Without the lock file, the flock alone names the holder.
	_, err = dev.dialLocked(nil)
	wantBusy(t, err, dev.slave, holder.Process.Pid, "holds an flock on it")

	holder.Process.Kill()
	holder.Wait()
	c, err := dev.dialLocked([]string{dir})
	if err != nil {
		t.Fatalf("open after the holder was killed: %v", err)
	}
	call(t, c, 3, `"free"`)
	c.Close()
}
