package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"
)

// DialFunc opens a client connection to the device named by u.
type DialFunc func(ctx context.Context, u *url.URL, opts Options) (Conn, error)

// Registry maps URL schemes to transports. The zero value is empty and ready;
// pkg/transport/all builds one with every transport. A registry whose
// transports hold state across dials (MQTT sessions shared by many devices)
// is closed with Close when its owner is done with it.
type Registry struct {
	dialers map[string]DialFunc

	closeMu sync.Mutex
	closers []func() error
}

// Register adds a transport for scheme (lower case, without "://").
func (r *Registry) Register(scheme string, dial DialFunc) {
	if r.dialers == nil {
		r.dialers = map[string]DialFunc{}
	}
	r.dialers[strings.ToLower(scheme)] = dial
}

// OnClose registers fn to run when the registry is closed: a transport
// whose dials share state (a broker connection) releases it there.
func (r *Registry) OnClose(fn func() error) {
	r.closeMu.Lock()
	defer r.closeMu.Unlock()
	r.closers = append(r.closers, fn)
}

// Close runs the functions registered with OnClose, last first, once, and
// returns the first error. Connections dialed through the registry that
// are still open end with it (their Send and Recv return ErrClosed). It is
// idempotent; a registry without such functions has nothing to close.
func (r *Registry) Close() error {
	r.closeMu.Lock()
	fns := r.closers
	r.closers = nil
	r.closeMu.Unlock()
	var first error
	for i := len(fns) - 1; i >= 0; i-- {
		if err := fns[i](); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Schemes lists the registered schemes, sorted.
func (r *Registry) Schemes() []string {
	out := make([]string, 0, len(r.dialers))
	for s := range r.dialers {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

// ErrBadPort is wrapped by every error about a --port value that cannot be
// used (unknown scheme, malformed URL).
var ErrBadPort = errors.New("bad port")

// ParsePort turns a --port value into a URL. A value without "://" is a
// serial port path (/dev/ttyUSB0, COM3, ./link) and becomes serial://PATH.
func ParsePort(port string) (*url.URL, error) {
	port = strings.TrimSpace(port)
	if port == "" {
		return nil, fmt.Errorf("%w: no port given: pass --port (for example --port /dev/ttyUSB0 or --port http://192.168.4.1/rpc) or set OTACTL_PORT", ErrBadPort)
	}
	i := strings.Index(port, "://")
	if i < 0 {
		if hostPort(port) {
			// "192.168.4.1:80" is a network address typed without its
			// scheme, not a serial device in the working directory.
			return nil, fmt.Errorf("%w: %s is not a serial port: did you mean http://%s/rpc or ws://%s/rpc?", ErrBadPort, port, port, port)
		}
		scheme, _, colon := strings.Cut(port, ":")
		if example := networkExample[strings.ToLower(scheme)]; colon && example != "" {
			// "http:", "mqtt:broker/dev1": a URL whose "//" was lost, not
			// a serial device. What may be credentials (up to an '@') is
			// not shown.
			shown := port
			if at := strings.LastIndex(port, "@"); at >= 0 {
				shown = scheme + ":xxxxx" + port[at:]
			}
			return nil, fmt.Errorf("%w: %s is not a serial port, and as a URL it lacks \"//\" after %q: write for example %s",
				ErrBadPort, shown, scheme+":", example)
		}
		return &url.URL{Scheme: "serial", Path: port}, nil
	}
	if !utf8.ValidString(port) {
		// Text only: url.Parse takes some raw bytes it then cannot read
		// back once escaped.
		return nil, fmt.Errorf("%w: %q is not UTF-8 text: type the URL, percent-escaping bytes that are not text", ErrBadPort, RedactString(port))
	}
	if !validScheme(port[:i]) {
		// "/://user:pass@host" or "a:://…" would parse as a relative or
		// opaque URL, whose userinfo Redact would not find.
		return nil, fmt.Errorf("%w: %q has no valid scheme before \"://\": use for example http://192.168.4.1/rpc, or a serial device path", ErrBadPort, RedactString(port))
	}
	u, err := url.Parse(port)
	if err != nil {
		// url.Parse errors quote the input, which may hold a password.
		return nil, fmt.Errorf("%w: %q is not a valid URL", ErrBadPort, RedactString(port))
	}
	u.Scheme = strings.ToLower(u.Scheme)
	return u, nil
}

// networkExample is a --port of each network scheme, for the error that
// says how to write one.
var networkExample = map[string]string{
	"http": "http://192.168.4.1/rpc", "https": "https://192.168.4.1/rpc",
	"ws": "ws://192.168.4.1/rpc", "wss": "wss://192.168.4.1/rpc",
	"mqtt": "mqtt://broker/<device_id>", "mqtts": "mqtts://broker/<device_id>",
}

// hostPort reports whether s is HOST:PORT (an IP address, "localhost" or a
// dotted host name, then a port number): an address that lacks its scheme.
func hostPort(s string) bool {
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" || port == "" {
		return false
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || strings.Trim(port, "0123456789") != "" {
		return false
	}
	if net.ParseIP(host) != nil || strings.EqualFold(host, "localhost") {
		return true
	}
	if !strings.Contains(host, ".") {
		return false
	}
	for _, c := range host {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// validScheme reports whether s is a URL scheme (RFC 3986): a letter, then
// letters, digits, '+', '-' or '.'.
func validScheme(s string) bool {
	for i, c := range s {
		letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		if !letter && (i == 0 || !(c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.')) {
			return false
		}
	}
	return s != ""
}

// Dial parses port and opens a connection with the transport of its scheme.
func (r *Registry) Dial(ctx context.Context, port string, opts Options) (Conn, error) {
	u, err := ParsePort(port)
	if err != nil {
		return nil, err
	}
	dial, ok := r.dialers[u.Scheme]
	if !ok {
		return nil, fmt.Errorf("%w: unknown scheme %q in %s; known schemes: %s (or a bare serial device path)",
			ErrBadPort, u.Scheme, Redact(u), strings.Join(r.Schemes(), ", "))
	}
	return dial(ctx, u, opts)
}

// Redact renders u without secrets: a password becomes "xxxxx", and a user
// name without a password (a bearer token, as in ws://TOKEN@host/rpc) is
// hidden too.
func Redact(u *url.URL) string {
	if u == nil {
		return ""
	}
	if u.User == nil {
		if u.Scheme != "" && u.Opaque == "" && u.Host == "" && u.Path == "" {
			// url.URL drops the "//" of an empty authority: "mqtt://"
			// would print as "mqtt:".
			return u.Scheme + "://" + strings.TrimPrefix(u.String(), u.Scheme+":")
		}
		return u.String()
	}
	c := *u
	if _, has := u.User.Password(); has {
		c.User = url.UserPassword(u.User.Username(), "xxxxx")
	} else {
		c.User = url.User("xxxxx")
	}
	return c.String()
}

// RedactString hides the password in a URL-looking string, even one that
// does not parse: "mqtt://u:secret@h/x" becomes "mqtt://u:xxxxx@h/x".
func RedactString(s string) string {
	if u, err := url.Parse(s); err == nil && u.User != nil && u.Scheme != "" {
		return Redact(u)
	}
	// Not an absolute URL with credentials as url.Parse sees it ("//@://u:p@h"
	// is a relative one): hide what follows "://" up to the last '@'.
	i := strings.Index(s, "://")
	if i < 0 {
		return s
	}
	rest := s[i+3:]
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return s
	}
	userinfo := rest[:at]
	if c := strings.Index(userinfo, ":"); c >= 0 {
		userinfo = userinfo[:c] + ":xxxxx"
	} else {
		userinfo = "xxxxx"
	}
	return s[:i+3] + userinfo + rest[at:]
}
