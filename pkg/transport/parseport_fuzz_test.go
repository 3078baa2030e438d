package transport

import (
	"errors"
	"net/url"
	"strings"
	"testing"
)

// FuzzParsePort checks --port parsing (ParsePort) and the redaction of what
// it parsed or refused. The seed corpus is in testdata/fuzz/FuzzParsePort.
// Properties, for any input:
//   - no panic; a refusal wraps ErrBadPort;
//   - an accepted port has a lower-case scheme; one without "://" is a
//     serial device path, kept as given (trimmed);
//   - an accepted URL round-trips: ParsePort(u.String()) is the same URL
//     (unless it has neither host nor path, which every dialer refuses);
//   - its redacted form (Redact) parses again as the same URL except for
//     the credentials: a password becomes "xxxxx", a user name without a
//     password (a token) becomes "xxxxx";
//   - what is printed about a port (Redact of an accepted one, the error of
//     a refused one) does not depend on its password or token: the same
//     port with another secret of the same shape gives the same text.
func FuzzParsePort(f *testing.F) {
	for _, s := range []string{
		"/dev/ttyUSB0",
		"  COM3 ",
		"http://192.168.4.1/rpc",
		"HTTPS://user:pass@[::1]:8443/rpc?x=1#f",
		"ws://TOKEN@host/rpc",
		"mqtt://u:p%40ss@broker:1883/dev1",
		"mqtts://u:sec ret@broker/dev1",
		"mqtt://u:a%zzb@broker/dev1",
		"mqtt://u:pa/ss@broker/dev1",
		"wss://:onlypass@h/rpc",
		"://",
		"",
	} {
		f.Add(s, "s3cr3tPASS")
	}
	f.Fuzz(func(t *testing.T, port, secret string) {
		checkPort(t, port)
		// The same port with the secret as its password, and as a token.
		i := strings.Index(port, "://")
		if i < 0 || secret == "" || strings.ContainsAny(secret, "/?#@%") {
			return // a secret of another shape would parse differently
		}
		rest := port[i+3:]
		if at := strings.LastIndex(rest, "@"); at >= 0 {
			rest = rest[at+1:] // drop the input's own credentials
		}
		head := port[:i+3]
		forms := [][2]string{{head + "user:", "@" + rest}}
		if !strings.Contains(secret, ":") { // a token with ':' is user:password
			forms = append(forms, [2]string{head, "@" + rest})
		}
		for _, f := range forms {
			p1, p2 := f[0]+secret+f[1], f[0]+twin(secret)+f[1]
			if a, b := printed(p1), printed(p2); a != b {
				t.Fatalf("what is printed depends on the secret:\n%q -> %q\n%q -> %q", p1, a, p2, b)
			}
		}
	})
}

// checkPort checks ParsePort's result for one input.
func checkPort(t *testing.T, port string) {
	t.Helper()
	u, err := ParsePort(port)
	if err != nil {
		if !errors.Is(err, ErrBadPort) {
			t.Fatalf("ParsePort(%q): error %v does not wrap ErrBadPort", port, err)
		}
		return
	}
	if u == nil {
		t.Fatalf("ParsePort(%q): nil URL and no error", port)
	}
	if u.Scheme != strings.ToLower(u.Scheme) {
		t.Fatalf("ParsePort(%q): scheme %q is not lower case", port, u.Scheme)
	}
	if !strings.Contains(port, "://") {
		if u.Scheme != "serial" || u.Path != strings.TrimSpace(port) || u.User != nil || u.Host != "" {
			t.Fatalf("ParsePort(%q) = %#v, want the serial path as given", port, u)
		}
		return
	}
	if u.Host == "" && u.Path == "" && u.User == nil {
		// "a://", "http://?x": u.String() drops the empty authority, and
		// every dialer refuses a port with neither host nor path.
		return
	}
	again, err := ParsePort(u.String())
	if err != nil {
		t.Fatalf("ParsePort(%q) = %q, which does not parse again: %v", port, u, err)
	}
	if again.String() != u.String() || !sameUser(again.User, u.User) {
		t.Fatalf("ParsePort(%q) = %q does not round-trip: %q", port, u, again)
	}
	red := Redact(u)
	r, err := url.Parse(red)
	if err != nil {
		t.Fatalf("Redact(%q) = %q does not parse: %v", port, red, err)
	}
	if r.Scheme != u.Scheme || r.Host != u.Host || r.Path != u.Path || r.RawQuery != u.RawQuery || r.Fragment != u.Fragment {
		t.Fatalf("Redact(%q) = %q is another URL than %q", port, red, u)
	}
	switch pw, has := u.User.Password(); {
	case u.User == nil:
		if r.User != nil {
			t.Fatalf("Redact(%q) = %q adds credentials", port, red)
		}
	case has:
		if rpw, _ := r.User.Password(); r.User.Username() != u.User.Username() || rpw != "xxxxx" {
			t.Fatalf("Redact(%q) = %q: password %q not replaced", port, red, pw)
		}
	default:
		if _, rhas := r.User.Password(); r.User.Username() != "xxxxx" || rhas {
			t.Fatalf("Redact(%q) = %q: token not hidden", port, red)
		}
	}
}

// printed is what otactl prints about a port: the redacted URL, or the
// error that refuses it.
func printed(port string) string {
	u, err := ParsePort(port)
	if err != nil {
		return "error: " + err.Error()
	}
	return Redact(u)
}

// twin returns s with every ASCII letter and digit replaced by another of
// its kind, and every other byte kept, so that a URL parser treats both
// alike.
func twin(s string) string {
	b := []byte(s)
	for i, c := range b {
		switch {
		case c >= 'a' && c <= 'z':
			b[i] = 'a' + (c-'a'+1)%26
		case c >= 'A' && c <= 'Z':
			b[i] = 'A' + (c-'A'+1)%26
		case c >= '0' && c <= '9':
			b[i] = '0' + (c-'0'+1)%10
		}
	}
	return string(b)
}

func sameUser(a, b *url.Userinfo) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.String() == b.String()
}

// Found by FuzzParsePort: a port with "://" but no scheme before it (a
// slash or nothing first) parsed as a relative URL, so the error that
// refused it later printed its credentials in clear. ParsePort refuses it
// at once, with the password hidden.
func TestParsePortURLWithoutScheme(t *testing.T) {
	for _, port := range []string{"/://user:s3cret@host/rpc", "://user:s3cret@host/rpc", "./://s3cret@host", "A:://user:s3cret@host", "//@://user:s3cret@host"} {
		u, err := ParsePort(port)
		if !errors.Is(err, ErrBadPort) {
			t.Fatalf("ParsePort(%q) = %v, %v; want ErrBadPort", port, u, err)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Fatalf("ParsePort(%q): the error shows the secret: %v", port, err)
		}
		if !strings.Contains(err.Error(), "scheme") {
			t.Fatalf("ParsePort(%q): the error does not say what is wrong: %v", port, err)
		}
	}
}

// Found by FuzzParsePort: a URL --port with bytes that are not UTF-8 (here
// in an IPv6 zone) was accepted, but printed (escaped) it no longer parsed.
// A port is text: such bytes are a usage error.
func TestParsePortNotUTF8(t *testing.T) {
	for _, port := range []string{"A://[::%25\xf0]", "http://h\xff/rpc", "mqtt://u:p\xfe@h/d"} {
		u, err := ParsePort(port)
		if !errors.Is(err, ErrBadPort) || !strings.Contains(err.Error(), "UTF-8") {
			t.Fatalf("ParsePort(%q) = %v, %v; want ErrBadPort saying the port is not UTF-8", port, u, err)
		}
		if strings.Contains(err.Error(), "p\xfe") || strings.Contains(err.Error(), `p\xfe`) {
			t.Fatalf("ParsePort(%q): the error shows the password: %v", port, err)
		}
	}
}
