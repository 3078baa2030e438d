package all

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/otactl/otactl/pkg/transport"
)

func TestSchemes(t *testing.T) {
	got := strings.Join(NewRegistry().Schemes(), ",")
	if got != "http,https,mqtt,mqtts,serial,ws,wss" {
		t.Fatalf("schemes = %s", got)
	}
}

func TestBadPorts(t *testing.T) {
	r := NewRegistry()
	for _, tc := range []struct{ port, want string }{
		{"ftp://host/rpc", `unknown scheme "ftp"`},
		{"gopher://user:hunter2@host/", "known schemes: http, https, mqtt, mqtts, serial, ws, wss"},
		{"http://user:hunter2@[::1/rpc", "not a valid URL"},
		{"", "no port given"},
	} {
		_, err := r.Dial(context.Background(), tc.port, transport.Options{})
		if err == nil || !errors.Is(err, transport.ErrBadPort) {
			t.Fatalf("%q: err = %v, want ErrBadPort", tc.port, err)
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %q does not say %q", tc.port, err, tc.want)
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%q: error leaks the password: %v", tc.port, err)
		}
	}
}

func TestParsePortForms(t *testing.T) {
	for in, want := range map[string]string{
		"/dev/ttyUSB0":               "serial:///dev/ttyUSB0",
		"COM3":                       "serial:COM3",
		"HTTP://192.168.4.1/rpc":     "http://192.168.4.1/rpc",
		"mqtt://u:p@broker:1883/dev": "mqtt://u:p@broker:1883/dev",
	} {
		u, err := transport.ParsePort(in)
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if u.Scheme+":" != want[:strings.Index(want, ":")+1] {
			t.Errorf("%s: scheme %s, want %s", in, u.Scheme, want)
		}
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"mqtt://u:secret@h:1883/dev": "mqtt://u:xxxxx@h:1883/dev",
		"ws://TOKEN123@h/rpc":        "ws://xxxxx@h/rpc",
		"http://h/rpc":               "http://h/rpc",
		"mqtt://u:se%zzcret@h/x":     "mqtt://u:xxxxx@h/x",
	} {
		if got := transport.RedactString(in); got != want {
			t.Errorf("RedactString(%s) = %s, want %s", in, got, want)
		}
	}
}
