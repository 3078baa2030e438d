//go:build linux

package serial

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/transporttest"
)

// ptyDevice is Serve running an echo device on a pty.
type ptyDevice struct {
	master *ptyMaster
	slave  string
	srv    *Server
	echo   *transporttest.EchoDevice
}

func startPTYDevice(t *testing.T, opts transport.Options) *ptyDevice {
	t.Helper()
	m, slave, err := OpenPTY("")
	if err != nil {
		t.Fatalf("OpenPTY: %v", err)
	}
	echo := transporttest.NewEchoDevice()
	srv := Serve(context.Background(), m, echo, opts)
	t.Cleanup(func() { srv.Close() })
	return &ptyDevice{master: m.(*ptyMaster), slave: slave, srv: srv, echo: echo}
}

func (d *ptyDevice) dial(t *testing.T, query string, opts transport.Options) transport.Conn {
	t.Helper()
	u, err := url.Parse("serial://" + d.slave + query)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, err := Dial(ctx, u, opts)
	if err != nil {
		t.Fatalf("Dial %s: %v", u, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func call(t *testing.T, c transport.Conn, id int64, params string) *frame.Frame {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := c.Send(ctx, &frame.Frame{ID: id, Method: transporttest.MethodEcho, Params: json.RawMessage(params)}); err != nil {
		t.Fatalf("send: %v", err)
	}
	for {
		f, err := c.Recv(ctx)
		var nr *transport.NotRPCError
		if errors.As(err, &nr) && nr.ID != id {
			continue // a damaged frame naming another request: log output
		}
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		if f.ID == id {
			return f
		}
	}
}

// TestJunkBetweenFrames is the conformance suite's junk test (see
// conformance_test.go): device log lines, including ones that look like
// frames, between frames on a real pty.
func TestJunkBetweenFrames(t *testing.T) {
	dev := startPTYDevice(t, transport.Options{})
	var mu sync.Mutex
	var lines []string
	c := dev.dial(t, "", transport.Options{DeviceLog: func(l string) {
		mu.Lock()
		lines = append(lines, l)
		mu.Unlock()
	}})
	call(t, c, 1, "1")
	junk := []string{
		"[Nov 27 10:00:00.123] mgos_ota_common.c:123 Arming commit watchdog for 300 seconds",
		`{"this": "looks like json but has no crc"`,
		`"""{"id":12}deadbeef"""`,
		"{}",
		"\x00\x01\x02 binary noise \xff\xfe",
		"line with \x13 XOFF in it",
	}
	for i, j := range junk {
		dev.srv.Log(j)
		if r := call(t, c, int64(100+i), `"after"`); string(r.Result) != `"after"` {
			t.Fatalf("after %q: result %s", j, r.Result)
		}
	}
	mu.Lock()
	got := strings.Join(lines, "\n")
	mu.Unlock()
	// Everything logged before the last reply has been read.
	for _, want := range []string{
		"Arming commit watchdog for 300 seconds",
		`{"this": "looks like json but has no crc"`,
		`"""{"id":12}deadbeef"""`,
		"\x00\x01\x02 binary noise \xff\xfe",
		"line with  XOFF in it",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("device log misses %q; got:\n%s", want, got)
		}
	}
}

func TestServerHandshakeBytes(t *testing.T) {
	m, slave, err := OpenPTY("")
	if err != nil {
		t.Fatal(err)
	}
	srv := Serve(context.Background(), m, transporttest.NewEchoDevice(), transport.Options{})
	defer srv.Close()
	f, err := os.OpenFile(slave, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write([]byte(Handshake)); err != nil {
		t.Fatal(err)
	}
	f.SetReadDeadline(time.Now().Add(testTimeout))
	got := make([]byte, len(handshakeReply))
	if _, err := io.ReadFull(f, got); err != nil {
		t.Fatal(err)
	}
	if string(got) != "\"\"\"\x04\"\"\"" {
		t.Fatalf("handshake reply %q, want rpc-uart's %q", got, "\"\"\"\x04\"\"\"")
	}
}

func TestOpenPTYSymlink(t *testing.T) {
	dir := t.TempDir()
	link := filepath.Join(dir, "ttyEMU")
	// A stale link from an earlier run is replaced.
	if err := os.Symlink("/dev/pts/nonexistent", link); err != nil {
		t.Fatal(err)
	}
	m, slave, err := OpenPTY(link)
	if err != nil {
		t.Fatalf("OpenPTY: %v", err)
	}
	if target, err := os.Readlink(link); err != nil || target != slave {
		t.Fatalf("link -> %q, %v; want %q", target, err, slave)
	}
	// The link is usable as a port.
	srv := Serve(context.Background(), m, transporttest.NewEchoDevice(), transport.Options{})
	u, _ := transport.ParsePort(link)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, err := Dial(ctx, u, transport.Options{})
	if err != nil {
		t.Fatalf("Dial %s: %v", link, err)
	}
	call(t, c, 1, `{"via":"link"}`)
	c.Close()
	srv.Close()
	if _, err := os.Lstat(link); !os.IsNotExist(err) {
		t.Fatalf("link not removed on close: %v", err)
	}
	// A regular file is not clobbered.
	if err := os.WriteFile(link, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := OpenPTY(link); err == nil || !strings.Contains(err.Error(), "not a symlink") {
		t.Fatalf("OpenPTY over a regular file = %v", err)
	}
	if b, _ := os.ReadFile(link); string(b) != "keep" {
		t.Fatal("regular file clobbered")
	}
}

func TestPTYIsRaw(t *testing.T) {
	m, slave, err := OpenPTY("")
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	f, err := os.OpenFile(slave, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Host to device: bytes arrive untouched (no CR/LF translation, XON and
	// XOFF not eaten by the tty).
	in := "a\r\nb\n\x11\x13\x04\xff"
	if _, err := f.Write([]byte(in)); err != nil {
		t.Fatal(err)
	}
	mf := m.(*ptyMaster).File
	mf.SetReadDeadline(time.Now().Add(testTimeout))
	got := make([]byte, len(in))
	if _, err := io.ReadFull(mf, got); err != nil {
		t.Fatal(err)
	}
	if string(got) != in {
		t.Fatalf("master read %q, want %q", got, in)
	}
	// Device to host: no echo back to the device.
	if _, err := mf.Write([]byte("x\n")); err != nil {
		t.Fatal(err)
	}
	f.SetReadDeadline(time.Now().Add(testTimeout))
	got = make([]byte, 2)
	if _, err := io.ReadFull(f, got); err != nil || string(got) != "x\n" {
		t.Fatalf("slave read %q, %v", got, err)
	}
	mf.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, err := mf.Read(make([]byte, 10)); n > 0 {
		t.Fatalf("device got an echo of its own output (%d bytes, %v)", n, err)
	}
}

func TestDialBusyPTY(t *testing.T) {
	if unix.Geteuid() == 0 {
		t.Skip("root ignores TIOCEXCL; the message is covered by TestOpenErrorMessages")
	}
	dev := startPTYDevice(t, transport.Options{})
	c := dev.dial(t, "", transport.Options{})
	defer c.Close()
	_, err := Dial(context.Background(), &url.URL{Scheme: "serial", Path: dev.slave}, transport.Options{})
	if err == nil || !strings.Contains(err.Error(), "is busy: close other programs using it") {
		t.Fatalf("second Dial = %v, want busy", err)
	}
}

func TestDialSetsTermios(t *testing.T) {
	dev := startPTYDevice(t, transport.Options{})
	termios := func() *unix.Termios {
		t.Helper()
		tio, err := unix.IoctlGetTermios(int(dev.master.slave.Fd()), unix.TCGETS)
		if err != nil {
			t.Fatal(err)
		}
		return tio
	}
	c := dev.dial(t, "?baud=57600&hwflow=1", transport.Options{})
	tio := termios()
	if tio.Cflag&unix.CBAUD != unix.B57600 {
		t.Errorf("baud bits = %#o, want B57600", tio.Cflag&unix.CBAUD)
	}
	if tio.Cflag&unix.CRTSCTS == 0 {
		t.Error("RTS/CTS not enabled with ?hwflow=1")
	}
	if tio.Cflag&unix.CSIZE != unix.CS8 || tio.Cflag&(unix.PARENB|unix.CSTOPB) != 0 {
		t.Errorf("not 8N1: cflag %#o", tio.Cflag)
	}
	if tio.Iflag&(unix.IXON|unix.IXOFF) != 0 || tio.Lflag&unix.ECHO != 0 {
		t.Errorf("not raw: iflag %#o lflag %#o", tio.Iflag, tio.Lflag)
	}
	c.Close()
	// Defaults: 115200, no hardware flow control (the zero-baud pitfall).
	c = dev.dial(t, "", transport.Options{})
	defer c.Close()
	tio = termios()
	if tio.Cflag&unix.CBAUD != unix.B115200 {
		t.Errorf("default baud bits = %#o, want B115200", tio.Cflag&unix.CBAUD)
	}
	if tio.Cflag&unix.CRTSCTS != 0 {
		t.Error("RTS/CTS enabled by default")
	}
}
