package transport

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/otactl/otactl/pkg/rpc/frame"
)

// ErrNotRPC is matched (errors.Is) by every error that means the device
// answered, but with something that is not an RPC frame: an HTTP status other
// than 200 and 401, HTML, text, NaN, a JSON value that is not an object, an
// object that is no reply (no id, or an id that answers nothing asked), or a
// reply larger than the client's bound. The concrete error is a
// *NotRPCError. The CLI maps it to exit code 1 (docs/exit-codes.md): the
// link works, the device (or whatever answers at that address) said
// something otactl cannot read.
var ErrNotRPC = errors.New("the device answered something that is not an RPC frame")

// DefaultMaxReplySize is how many bytes a client reads of one reply before it
// gives up on it as "not an RPC frame": a device's frames are at most
// rpc.max_frame_size (4 KiB by default), so 64 KiB leaves room for devices
// configured with larger frames while bounding the memory a misbehaving
// peer can make otactl use. transport.Options.MaxFrameSize overrides it.
const DefaultMaxReplySize = 64 << 10

// NotRPCError says what the device answered instead of an RPC frame. Build
// it with NewNotRPCError, which takes the excerpt from the raw bytes.
type NotRPCError struct {
	// What names what came back, e.g. "HTTP 500 Internal Server Error", "a
	// WebSocket text message", "a serial frame with a bad CRC".
	What string
	// Reason says why it is not an RPC frame ("not JSON", "a JSON number, not
	// an object", "larger than 65536 bytes"); may be empty.
	Reason string
	// Excerpt is a short, quoted, redacted excerpt of what came back; ""
	// when there is none to show.
	Excerpt string
	// Empty says that what came back was empty (or only white space).
	Empty bool
	// From names the device (a redacted URL or a port path); may be empty.
	From string
	// Hint says what to do; may be empty.
	Hint string
	// ID is the request id this answer was meant for, when the transport can
	// tell (a serial frame whose CRC is wrong but whose id is readable); 0
	// means unknown, and the RPC client fails every call in flight.
	ID int64
}

func (e *NotRPCError) Error() string {
	var b strings.Builder
	b.WriteString(ErrNotRPC.Error())
	b.WriteString(": ")
	b.WriteString(e.What)
	if e.Excerpt != "" {
		b.WriteString(" ")
		b.WriteString(e.Excerpt)
	} else if e.Empty {
		b.WriteString(" with an empty body")
	}
	if e.Reason != "" {
		b.WriteString(" (")
		b.WriteString(e.Reason)
		b.WriteString(")")
	}
	if e.From != "" {
		b.WriteString(" from ")
		b.WriteString(e.From)
	}
	if e.Hint != "" {
		b.WriteString(": ")
		b.WriteString(e.Hint)
	}
	return b.String()
}

// Is makes errors.Is(err, ErrNotRPC) true.
func (e *NotRPCError) Is(target error) bool { return target == ErrNotRPC }

// NewNotRPCError builds a *NotRPCError with an excerpt of data (see
// Excerpt); data nil means nothing to show, data empty an empty answer.
func NewNotRPCError(what, reason string, data []byte, from string) *NotRPCError {
	ex := Excerpt(data)
	return &NotRPCError{What: what, Reason: reason, Excerpt: ex, Empty: data != nil && ex == "", From: from}
}

// ExcerptMax is how many characters of an unreadable reply an error shows.
const ExcerptMax = 80

// redactWindow is how much of a reply is redacted before the excerpt is
// cut, so that a secret that starts inside the excerpt is hidden whole.
const redactWindow = 4096

// Excerpt returns a short, quoted, redacted excerpt of a reply for an error
// message: at most ExcerptMax characters of it (control characters and
// invalid UTF-8 escaped by %q), followed by "… (N bytes)" when it was cut;
// "" for an empty (or all white space) reply. Passwords and tokens in it are
// hidden (see RedactText).
func Excerpt(data []byte) string { return excerpt(data, "") }

// ExcerptCut is Excerpt for the first bytes of a reply that was not read to
// its end: the excerpt says "(more than N bytes)".
func ExcerptCut(data []byte) string {
	return excerpt(data, fmt.Sprintf("more than %d bytes", len(data)))
}

func excerpt(data []byte, size string) string {
	n := len(data)
	if size == "" {
		size = fmt.Sprintf("%d bytes", n)
	}
	w := data
	if len(w) > redactWindow {
		w = w[:redactWindow]
	}
	s := strings.TrimSpace(string(w))
	if s == "" {
		return ""
	}
	s = RedactText(s)
	cut := false
	// Cut after ExcerptMax characters (an invalid byte counts as one, and
	// %q shows it as \xNN).
	for i, k := 0, 0; i < len(s); k++ {
		if k == ExcerptMax {
			s, cut = s[:i], true
			break
		}
		_, size := utf8.DecodeRuneInString(s[i:])
		i += size
	}
	if cut || len(w) < n || strings.HasPrefix(size, "more") {
		return fmt.Sprintf("%q… (%s)", s, size)
	}
	return fmt.Sprintf("%q", s)
}

var (
	// scheme://user:pass@ and scheme://token@
	reURLUser = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@"'<>]+@`)
	// Authorization: <anything to the end of the line or string>
	reAuthHeader = regexp.MustCompile(`(?i)\b(authorization"?\s*[:=]\s*)("?)[^\r\n"]+`)
	// a bare "Bearer x" / "Basic x"
	reBearer = regexp.MustCompile(`(?i)\b(bearer\s+|basic\s+)[^\s"',;]+`)
	// "password": "x", pass=x, token: x, secret, api_key, … (JSON, query
	// strings, config dumps)
	reSecretField = regexp.MustCompile(`(?i)("?[a-z0-9_.-]*(?:pass(?:word|wd)?|token|secret|api[_-]?key|psk|creds?)"?\s*[:=]\s*)("(?:[^"\\]|\\.)*"|[^\s,&;}"']+)`)
)

// RedactText hides what looks like a secret in free text from the other end
// (a device's or a web server's answer): user info in URLs, Authorization
// and bearer tokens, and the values of fields named like passwords, tokens,
// secrets, keys or credentials. It errs on the side of hiding.
func RedactText(s string) string {
	s = reURLUser.ReplaceAllString(s, "${1}xxxxx@")
	s = reAuthHeader.ReplaceAllString(s, "${1}${2}xxxxx")
	s = reBearer.ReplaceAllString(s, "${1}xxxxx")
	s = reSecretField.ReplaceAllStringFunc(s, func(m string) string {
		sub := reSecretField.FindStringSubmatch(m)
		if strings.HasPrefix(sub[2], `"`) {
			return sub[1] + `"xxxxx"`
		}
		return sub[1] + "xxxxx"
	})
	return s
}

// ParseReply parses one message from a link that carries only RPC frames
// (HTTP, WebSocket, MQTT) and says why it is not an RPC frame when it is
// not: not JSON, a JSON value that is not an object, an object whose id or
// error cannot be read, or an object that is neither a request (it names a
// method) nor a reply (it has an id). Serial links carry the device's log
// output too and use their own rules.
func ParseReply(data []byte) (*frame.Frame, string) {
	f, err := frame.Parse(data)
	if err != nil {
		return nil, describeNonFrame(data, err)
	}
	if f.ID == 0 && !f.IsRequest() {
		return nil, "a JSON object without an id: no reply"
	}
	return f, ""
}

// describeNonFrame says what data is, given that frame.Parse refused it.
func describeNonFrame(data []byte, err error) string {
	t := bytes.TrimSpace(data)
	if len(t) == 0 {
		return "empty"
	}
	if !json.Valid(t) {
		if t[0] == '{' {
			return "invalid JSON"
		}
		return "not JSON"
	}
	switch t[0] {
	case '{':
		return err.Error() // valid JSON, but an id or error it cannot read
	case '[':
		return "a JSON array, not an object"
	case '"':
		return "a JSON string, not an object"
	case 't', 'f':
		return "a JSON boolean, not an object"
	case 'n':
		return "JSON null, not an object"
	}
	return "a JSON number, not an object"
}
