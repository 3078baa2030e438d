package serial

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"go.bug.st/serial"

	"github.com/otactl/otactl/pkg/transport"
)

func TestPortPath(t *testing.T) {
	tests := []struct {
		port string
		want string
	}{
		{"serial:///dev/ttyUSB0", "/dev/ttyUSB0"},
		{"serial://COM3", "COM3"},
		{"/dev/ttyUSB0", "/dev/ttyUSB0"}, // bare path, via transport.ParsePort
		{"COM3", "COM3"},
		{"./link", "./link"},
		{"serial:///dev/ttyUSB0?baud=9600", "/dev/ttyUSB0"},
	}
	for _, tc := range tests {
		u, err := transport.ParsePort(tc.port)
		if err != nil {
			t.Fatalf("ParsePort(%q): %v", tc.port, err)
		}
		if got := PortPath(u); got != tc.want {
			t.Errorf("PortPath(%q) = %q, want %q", tc.port, got, tc.want)
		}
	}
	if got := PortPath(&url.URL{Scheme: "serial", Path: "/dev/ttyUSB0"}); got != "/dev/ttyUSB0" {
		t.Errorf("PortPath(URL{Path}) = %q", got)
	}
	// The opaque form, which ParsePort does not produce but url.Parse does.
	u, err := url.Parse("serial:/dev/ttyACM0")
	if err != nil {
		t.Fatal(err)
	}
	if got := PortPath(u); got != "/dev/ttyACM0" {
		t.Errorf("PortPath(serial:/dev/ttyACM0) = %q", got)
	}
	u, _ = url.Parse("serial:COM4")
	if got := PortPath(u); got != "COM4" {
		t.Errorf("PortPath(serial:COM4) = %q", got)
	}
}

func TestParseConfig(t *testing.T) {
	tests := []struct {
		port    string
		opts    transport.Options
		want    portConfig
		wantErr string
	}{
		{"/dev/x", transport.Options{}, portConfig{path: "/dev/x", baud: 115200, hwFlow: false}, ""},
		{"/dev/x", transport.Options{BaudRate: 921600, HWFlowControl: true}, portConfig{path: "/dev/x", baud: 921600, hwFlow: true}, ""},
		{"serial:///dev/x?baud=9600", transport.Options{BaudRate: 921600}, portConfig{path: "/dev/x", baud: 9600, hwFlow: false}, ""},
		{"serial:///dev/x?hwflow=1", transport.Options{}, portConfig{path: "/dev/x", baud: 115200, hwFlow: true}, ""},
		{"serial:///dev/x?hw-flow-control=true", transport.Options{}, portConfig{path: "/dev/x", baud: 115200, hwFlow: true}, ""},
		{"serial:///dev/x?hwflow", transport.Options{}, portConfig{path: "/dev/x", baud: 115200, hwFlow: true}, ""},
		{"serial:///dev/x?hwflow=0", transport.Options{HWFlowControl: true}, portConfig{path: "/dev/x", baud: 115200, hwFlow: false}, ""},
		{"serial:///dev/x?baud=0", transport.Options{}, portConfig{}, "not a positive number"},
		{"serial:///dev/x?baud=fast", transport.Options{}, portConfig{}, "not a positive number"},
		{"serial:///dev/x?hwflow=maybe", transport.Options{}, portConfig{}, "not a boolean"},
		{"serial://", transport.Options{}, portConfig{}, "names no serial device"},
	}
	for _, tc := range tests {
		u, err := transport.ParsePort(tc.port)
		if err != nil {
			t.Fatalf("ParsePort(%q): %v", tc.port, err)
		}
		got, err := parseConfig(u, tc.opts)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, transport.ErrBadPort) {
				t.Errorf("%s: err = %v, want ErrBadPort saying %q", tc.port, err, tc.wantErr)
			}
			continue
		}
		if len(got.lockDirs) == 0 {
			t.Errorf("%s: no lock directories", tc.port)
		}
		got.lockDirs = nil
		if err != nil || got.path != tc.want.path || got.baud != tc.want.baud || got.hwFlow != tc.want.hwFlow {
			t.Errorf("%s %+v: got %+v, %v; want %+v", tc.port, tc.opts, got, err, tc.want)
		}
	}
}

func TestDialNotFound(t *testing.T) {
	p := filepath.Join(t.TempDir(), "ttyNOPE")
	_, err := Dial(context.Background(), &url.URL{Scheme: "serial", Path: p}, transport.Options{})
	if err == nil || !strings.Contains(err.Error(), "serial port "+p+" not found") || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Dial = %v, want a not-found error", err)
	}
	if !strings.Contains(err.Error(), "available ports") && !strings.Contains(err.Error(), "no serial ports found") {
		t.Fatalf("not-found error without a hint: %v", err)
	}
}

func TestDialNotASerialPort(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no /dev/null")
	}
	_, err := Dial(context.Background(), &url.URL{Scheme: "serial", Path: "/dev/null"}, transport.Options{})
	if err == nil || !strings.Contains(err.Error(), "not a usable serial port") {
		t.Fatalf("Dial(/dev/null) = %v", err)
	}
}

func TestOpenErrorMessages(t *testing.T) {
	cfg := portConfig{path: "/dev/ttyUSB0", baud: 115200}
	// The zero PortError has code PortBusy.
	busy := &serial.PortError{}
	if busy.Code() != serial.PortBusy {
		t.Fatal("test assumption broken: zero PortError is not PortBusy")
	}
	err := openError(cfg, busy)
	if !strings.HasPrefix(err.Error(), "port busy: another program has /dev/ttyUSB0 open (it is in exclusive mode): wait for it to finish or close it") ||
		!errors.Is(err, busy) || !errors.Is(err, ErrPortBusy) {
		t.Errorf("busy: %v", err)
	}
	err = openError(cfg, fmt.Errorf("open: %w", fs.ErrPermission))
	if !strings.Contains(err.Error(), "permission denied opening serial port /dev/ttyUSB0") || !errors.Is(err, fs.ErrPermission) {
		t.Errorf("permission: %v", err)
	}
}

// A regular file or a directory given as a serial port is a usage error
// that says so, before anything is locked or opened.
func TestDialRefusesWhatIsNotADevice(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "fw.zip")
	if err := os.WriteFile(file, []byte("PK"), 0o644); err != nil {
		t.Fatal(err)
	}
	for path, what := range map[string]string{file: "a regular file", dir: "a directory"} {
		_, err := Dial(context.Background(), &url.URL{Scheme: "serial", Path: path}, transport.Options{})
		if !errors.Is(err, transport.ErrBadPort) || !strings.Contains(err.Error(), path+" is not a serial device (it is "+what+")") {
			t.Fatalf("Dial(%s) = %v; want ErrBadPort saying it is %s, not a serial device", path, err, what)
		}
	}
}
