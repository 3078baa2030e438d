package transport

import (
	"errors"
	"strings"
	"testing"
)

// A network address typed without its scheme is refused with the URLs it
// probably means; a serial device path is still a serial device path.
func TestParsePortHostPortWithoutScheme(t *testing.T) {
	for _, p := range []string{"127.0.0.1:8080", "192.168.4.1:80", "localhost:8080", "[::1]:8080", "device.local:80", "Lab-1.example.com:8443"} {
		u, err := ParsePort(p)
		if !errors.Is(err, ErrBadPort) {
			t.Fatalf("ParsePort(%q) = %v, %v; want ErrBadPort", p, u, err)
		}
		want := p + " is not a serial port: did you mean http://" + p + "/rpc or ws://" + p + "/rpc?"
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("ParsePort(%q): %q does not say %q", p, err, want)
		}
	}
	for _, p := range []string{"/dev/ttyUSB0", "COM3", "./link", "ttyS0", "dev:1", "/tmp/a:80", "host:port", "1.2.3.4:0", "1.2.3.4:99999", "lab"} {
		u, err := ParsePort(p)
		if err != nil || u.Scheme != "serial" || u.Path != p {
			t.Fatalf("ParsePort(%q) = %v, %v; want the serial path %q", p, u, err, p)
		}
	}
}
