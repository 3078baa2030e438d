package transport

import (
	"errors"
	"net/url"
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

// A network URL typed without its "//" is a usage error that shows how to
// write it, not a serial device that is not found; what may be credentials
// is not shown.
func TestParsePortSchemeWithoutSlashes(t *testing.T) {
	for port, example := range map[string]string{
		"http:":                    "http://192.168.4.1/rpc",
		"HTTP:192.168.4.1/rpc":     "http://192.168.4.1/rpc",
		"wss:":                     "wss://192.168.4.1/rpc",
		"mqtt:u:s3cret@broker/dev": "mqtt://broker/<device_id>",
		"mqtts:broker/dev":         "mqtts://broker/<device_id>",
	} {
		u, err := ParsePort(port)
		if !errors.Is(err, ErrBadPort) {
			t.Fatalf("ParsePort(%q) = %v, %v; want ErrBadPort", port, u, err)
		}
		if !strings.Contains(err.Error(), `lacks "//"`) || !strings.Contains(err.Error(), "write for example "+example) {
			t.Errorf("ParsePort(%q): %q does not say what is missing and how to write it (%s)", port, err, example)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("ParsePort(%q): the error shows the secret: %v", port, err)
		}
	}
	// Without a colon it is a serial device's name, however it reads.
	for _, port := range []string{"http", "mqtt"} {
		if u, err := ParsePort(port); err != nil || u.Scheme != "serial" || u.Path != port {
			t.Errorf("ParsePort(%q) = %v, %v; want the serial path %q", port, u, err, port)
		}
	}
}

// url.URL prints an empty authority as nothing at all ("mqtt:"); Redact
// keeps the "//" the user typed, so that errors quote the port as given.
func TestRedactEmptyAuthority(t *testing.T) {
	for _, port := range []string{"mqtt://", "ws://?x=1", "http://#f"} {
		u, err := url.Parse(port)
		if err != nil {
			t.Fatal(err)
		}
		if got := Redact(u); got != port {
			t.Errorf("Redact(%q) = %q", port, got)
		}
	}
}
