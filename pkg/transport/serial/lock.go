package serial

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ErrPortBusy is wrapped by the error Dial returns when another program has
// the serial port open exclusively: it holds an flock(2) on the device, a
// live UUCP lock file names it, or (for a user other than root) the port
// is in exclusive mode (TIOCEXCL). docs/transports.md says which programs
// each of these stops.
var ErrPortBusy = errors.New("port busy")

// defaultLockDirs are the directories searched for UUCP lock files
// (LCK..<name>); a lock file is created in the first that exists and lets
// us write (/var/lock is usually a link to /run/lock).
func defaultLockDirs() []string { return []string{"/run/lock", "/var/lock"} }

// busyError says who has the port open, as far as the locks tell: pid is
// 0 when they do not name one; how says which lock stopped us.
func busyError(path string, pid int, how string) error {
	detail := how
	if pid > 0 {
		who := fmt.Sprintf("PID %d", pid)
		if name := procName(pid); name != "" {
			who += " (" + name + ")"
		}
		detail = who + " " + how
	}
	return fmt.Errorf("%w: another program has %s open (%s): wait for it to finish or close it (mos console, screen, minicom, idf.py monitor, another otactl)",
		ErrPortBusy, path, detail)
}

// procName returns the command name of pid from /proc, or "".
func procName(pid int) string {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "comm"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// uucpName is the lock file name of a device path by the UUCP convention:
// "LCK.." and the path below /dev, with "/" replaced by "_"
// (/dev/ttyUSB0 → LCK..ttyUSB0, /dev/pts/3 → LCK..pts_3).
func uucpName(path string) string {
	rel := strings.TrimPrefix(path, "/dev/")
	rel = strings.TrimLeft(rel, "/")
	return "LCK.." + strings.ReplaceAll(rel, "/", "_")
}

// readUUCP returns the PID a UUCP lock file names (ASCII decimal, as HDB
// UUCP writes it: ten characters and a newline), or 0 when it names none.
func readUUCP(file string) (int, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, nil
	}
	return pid, nil
}
