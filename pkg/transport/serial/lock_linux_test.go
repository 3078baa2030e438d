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
	"testing"

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

// A lock file naming a live process makes the port busy and names it; one
// naming a dead process is stale and replaced.
func TestUUCPLockFiles(t *testing.T) {
	dev := startPTYDevice(t, transport.Options{})
	dir := t.TempDir()
	file := filepath.Join(dir, uucpName(dev.slave))

	sleeper := exec.Command("sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Skipf("cannot start sleep: %v", err)
	}
	t.Cleanup(func() { sleeper.Process.Kill(); sleeper.Wait() })
	if err := os.WriteFile(file, fmt.Appendf(nil, "%10d\n", sleeper.Process.Pid), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := dev.dialLocked([]string{dir})
	wantBusy(t, err, dev.slave, sleeper.Process.Pid, "(sleep) holds lock file "+file)

	sleeper.Process.Kill()
	sleeper.Wait()
	c, err := dev.dialLocked([]string{dir})
	if err != nil {
		t.Fatalf("open with a stale lock file: %v", err)
	}
	defer c.Close()
	if b, _ := os.ReadFile(file); strings.TrimSpace(string(b)) != strconv.Itoa(os.Getpid()) {
		t.Fatalf("stale lock file not replaced: %q", b)
	}
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
