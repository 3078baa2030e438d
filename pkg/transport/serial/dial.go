package serial

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"strings"

	"go.bug.st/serial"

	"github.com/otactl/otactl/pkg/transport"
)

// DefaultBaudRate is the speed used when neither the URL nor the options
// give one (a zero go.bug.st/serial baud rate would mean 9600).
const DefaultBaudRate = 115200

// portConfig is what Dial opens.
type portConfig struct {
	path     string
	baud     int
	hwFlow   bool
	lockDirs []string // where UUCP lock files are looked for and made
}

// PortPath returns the device path named by a serial URL:
// serial:///dev/ttyUSB0 and serial:/dev/ttyUSB0 give /dev/ttyUSB0,
// serial://COM3 gives COM3, and transport.ParsePort's form of a bare path
// (URL{Scheme: "serial", Path: PATH}) gives PATH.
func PortPath(u *url.URL) string {
	var p string
	switch {
	case u.Opaque != "":
		p = u.Opaque
	case u.Host != "":
		p = u.Host + u.Path
	default:
		p = u.Path
	}
	if runtime.GOOS == "windows" && len(p) > 1 && p[0] == '/' && !strings.Contains(p[1:], "/") {
		p = p[1:] // serial:///COM3
	}
	return p
}

func parseConfig(u *url.URL, opts transport.Options) (portConfig, error) {
	cfg := portConfig{path: PortPath(u), baud: opts.BaudRate, hwFlow: opts.HWFlowControl, lockDirs: defaultLockDirs()}
	if cfg.path == "" {
		return cfg, fmt.Errorf("%w: %s names no serial device; use for example serial:///dev/ttyUSB0 or serial://COM3",
			transport.ErrBadPort, transport.Redact(u))
	}
	q := u.Query()
	if v := q.Get("baud"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return cfg, fmt.Errorf("%w: baud=%q in %s is not a positive number; use for example ?baud=115200",
				transport.ErrBadPort, v, transport.Redact(u))
		}
		cfg.baud = n
	}
	for _, key := range []string{"hwflow", "hw-flow-control"} {
		if !q.Has(key) {
			continue
		}
		v := q.Get(key)
		if v == "" {
			cfg.hwFlow = true // ?hwflow alone switches it on
			continue
		}
		b, err := strconv.ParseBool(v)
		if err != nil {
			return cfg, fmt.Errorf("%w: %s=%q in %s is not a boolean; use %s=1 or %s=0",
				transport.ErrBadPort, key, v, transport.Redact(u), key, key)
		}
		cfg.hwFlow = b
	}
	if cfg.baud <= 0 {
		cfg.baud = DefaultBaudRate
	}
	return cfg, nil
}

// Dial opens the serial port named by u (see PortPath) at 8N1, the baud rate
// of ?baud=N or opts.BaudRate (default 115200), with RTS/CTS flow control if
// ?hwflow=1 (or ?hw-flow-control=1) or opts.HWFlowControl. DTR and RTS are
// set low right after opening (many boards wire them to reset and boot
// pins), pending input and output are flushed, and the handshake is done
// within ctx (see NewConn).
//
// The port is held exclusively until Close: besides the TIOCEXCL that
// go.bug.st/serial sets, an flock(2) on the device and a UUCP lock file
// (docs/transports.md) make a second opener, root included, fail at once
// with an error wrapping ErrPortBusy.
func Dial(ctx context.Context, u *url.URL, opts transport.Options) (transport.Conn, error) {
	cfg, err := parseConfig(u, opts)
	if err != nil {
		return nil, err
	}
	return dialConfig(ctx, cfg, opts)
}

// Open opens the serial port named by u with the settings, locks and line
// handling of Dial (8N1, ?baud=N, ?hwflow=1; DTR and RTS low; input and
// output flushed; held exclusively until Close), but without the RPC
// handshake: the raw byte stream of the link, whose log lines a console
// shows (feed it to a Decoder). Close unblocks a pending Read.
func Open(u *url.URL, opts transport.Options) (io.ReadWriteCloser, error) {
	cfg, err := parseConfig(u, opts)
	if err != nil {
		return nil, err
	}
	return openPort(cfg, opts)
}

func dialConfig(ctx context.Context, cfg portConfig, opts transport.Options) (transport.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	port, err := openPort(cfg, opts)
	if err != nil {
		return nil, err
	}
	c, err := NewConn(ctx, port, opts)
	if err != nil {
		return nil, fmt.Errorf("serial port %s: %w", cfg.path, err)
	}
	return c, nil
}

// lockedPort is an open port with its locks; Close releases them after
// closing the port.
type lockedPort struct {
	serial.Port
	lock *portLock
}

func (p *lockedPort) Close() error {
	err := p.Port.Close()
	p.lock.release()
	return err
}

func openPort(cfg portConfig, opts transport.Options) (_ serial.Port, err error) {
	if err := checkDevice(cfg.path); err != nil {
		return nil, err
	}
	lock, err := lockPort(cfg.path, cfg.lockDirs)
	if err != nil {
		if errors.Is(err, ErrPortBusy) {
			return nil, err
		}
		return nil, openError(cfg, err)
	}
	defer func() {
		if err != nil {
			lock.release()
		}
	}()
	mode := &serial.Mode{
		BaudRate: cfg.baud,
		DataBits: 8,
		Parity:   serial.NoParity,
		StopBits: serial.OneStopBit,
	}
	var side *sideFD
	if cfg.hwFlow {
		// go.bug.st/serial always turns RTS/CTS off; it is turned on through
		// a second descriptor opened before the port is locked.
		s, err := openSide(cfg.path)
		if err != nil {
			return nil, openError(cfg, err)
		}
		side = s
		defer side.close()
	}
	p, err := serial.Open(cfg.path, mode)
	if err != nil {
		return nil, openError(cfg, err)
	}
	debug := func(msg string, err error) {
		if err != nil && opts.Logger != nil {
			opts.Logger.Debug("serial: "+msg, "port", cfg.path, "err", err)
		}
	}
	// Opening raised both lines. Lower RTS first: on the usual ESP32/ESP8266
	// auto-reset circuit, DTR low with RTS high holds the chip in reset,
	// while RTS low with DTR high only selects the boot mode for a reset
	// that does not happen. Ptys and some adapters have no modem lines: not
	// an error.
	if !cfg.hwFlow {
		// With RTS/CTS the driver drives RTS itself.
		debug("cannot set RTS low", p.SetRTS(false))
	}
	debug("cannot set DTR low", p.SetDTR(false))
	if side != nil {
		if err := side.enableRTSCTS(); err != nil {
			p.Close()
			return nil, fmt.Errorf("serial port %s: cannot turn on hardware flow control: %w", cfg.path, err)
		}
	}
	debug("cannot flush input", p.ResetInputBuffer())
	debug("cannot flush output", p.ResetOutputBuffer())
	return &lockedPort{Port: p, lock: lock}, nil
}

// checkDevice refuses, before anything is locked or opened, a path that
// exists and is not a character device (a regular file, a directory): a
// usage error that says what was given. A path that does not exist is left
// to the open, whose error lists the ports there are. Windows names its
// ports (COM3) without files to look at.
func checkDevice(path string) error {
	if runtime.GOOS == "windows" {
		return nil
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode()&fs.ModeCharDevice != 0 {
		return nil
	}
	what := "not a device"
	switch {
	case fi.Mode().IsRegular():
		what = "a regular file"
	case fi.IsDir():
		what = "a directory"
	case fi.Mode()&fs.ModeNamedPipe != 0:
		what = "a named pipe"
	case fi.Mode()&fs.ModeSocket != 0:
		what = "a socket"
	}
	return fmt.Errorf("%w: %s is not a serial device (it is %s): give the device's serial port (/dev/ttyUSB0, /dev/ttyACM0, COM3) or its URL (http://HOST/rpc, ws://HOST/rpc, mqtt://BROKER/ID)",
		transport.ErrBadPort, path, what)
}

// openError turns an error from opening a port into one that says what to do.
func openError(cfg portConfig, err error) error {
	var pe *serial.PortError
	if errors.As(err, &pe) {
		switch pe.Code() {
		case serial.PortBusy:
			return fmt.Errorf("%w: %w", busyError(cfg.path, 0, "it is in exclusive mode"), err)
		case serial.PortNotFound:
			return notFoundError(cfg.path, err)
		case serial.PermissionDenied:
			return permissionError(cfg.path, err)
		case serial.InvalidSpeed:
			return fmt.Errorf("serial port %s does not support %d baud: pick another ?baud=N: %w", cfg.path, cfg.baud, err)
		case serial.InvalidSerialPort:
			return fmt.Errorf("%s is not a usable serial port (is it a serial device?): %w", cfg.path, err)
		}
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return notFoundError(cfg.path, err)
	case errors.Is(err, fs.ErrPermission):
		return permissionError(cfg.path, err)
	}
	return fmt.Errorf("open serial port %s: %w", cfg.path, err)
}

func notFoundError(path string, err error) error {
	ports, lerr := serial.GetPortsList()
	hint := "no serial ports found: is the device plugged in, and its USB-serial driver installed?"
	if lerr == nil && len(ports) > 0 {
		hint = "available ports: " + strings.Join(ports, ", ")
	}
	return fmt.Errorf("serial port %s not found (%s): %w", path, hint, err)
}

func permissionError(path string, err error) error {
	hint := "run as a user allowed to use it"
	if runtime.GOOS == "linux" {
		hint = "add your user to the dialout group (sudo usermod -aG dialout $USER) and log in again"
	}
	return fmt.Errorf("permission denied opening serial port %s: %s: %w", path, hint, err)
}
