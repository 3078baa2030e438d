package rpc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"sync"

	"github.com/otactl/otactl/pkg/rpc/frame"
)

// Request is an incoming call as a method handler sees it.
type Request struct {
	Method string
	// Params are the arguments ("params", or the legacy "args"); nil when none.
	Params json.RawMessage
	// Frame is the whole request frame.
	Frame *frame.Frame

	once   sync.Once
	fields map[string]json.RawMessage
}

// HandlerFunc handles one method. It returns the result (any value that
// marshals to JSON; a json.RawMessage is sent as is; nil becomes null) or an
// error: an *Error sets the reply's code and message (code 0 is the legacy
// "success with a message" form); any other error becomes code -1 with the
// error text.
type HandlerFunc func(ctx context.Context, req *Request) (any, error)

// Server is a method registry that answers request frames. It implements
// transport.Handler, so any transport's device side can serve it.
type Server struct {
	// ID is the device id: the reply "src", and requests whose non-empty
	// "dst" differs from it are dropped (when ID is empty, nothing is).
	ID string

	mu      sync.RWMutex
	methods map[string]HandlerFunc
	gate    func(ctx context.Context, req *Request) *frame.Error
}

// NewServer returns an empty registry for device id.
func NewServer(id string) *Server {
	return &Server{ID: id, methods: map[string]HandlerFunc{}}
}

// Handle registers fn for method, replacing any previous handler.
func (s *Server) Handle(method string, fn HandlerFunc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.methods == nil {
		s.methods = map[string]HandlerFunc{}
	}
	s.methods[method] = fn
}

// Remove unregisters method, if registered (a device whose firmware
// changed at a reboot no longer has the old firmware's methods).
func (s *Server) Remove(method string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.methods, method)
}

// SetGate installs a check run before every known method (authentication,
// "device is rebooting"); a non-nil error is sent as the reply instead.
func (s *Server) SetGate(gate func(ctx context.Context, req *Request) *frame.Error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gate = gate
}

// Methods lists the registered method names, sorted (for RPC.List).
func (s *Server) Methods() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]string, 0, len(s.methods))
	for m := range s.methods {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}

// HandleFrame answers one request frame. It returns nil for frames that get
// no reply: responses, requests without id (their handler still runs), and
// requests addressed to another device.
func (s *Server) HandleFrame(ctx context.Context, f *frame.Frame) *frame.Frame {
	if f == nil || !f.IsRequest() {
		return nil
	}
	if f.Dst != "" && s.ID != "" && f.Dst != s.ID {
		return nil
	}
	req := &Request{Method: f.Method, Params: f.ParamsOrArgs(), Frame: f}
	s.mu.RLock()
	fn, ok := s.methods[f.Method]
	gate := s.gate
	s.mu.RUnlock()

	resp := &frame.Frame{ID: f.ID, Src: s.ID, Dst: f.Src, Tag: f.Tag}
	switch {
	case !ok:
		nh := NoHandler(f.Method)
		resp.Error = &frame.Error{Code: nh.Code, Message: nh.Message}
	default:
		if gate != nil {
			if e := gate(ctx, req); e != nil {
				resp.Error = e
				break
			}
		}
		result, err := fn(ctx, req)
		if err != nil {
			var re *Error
			if errors.As(err, &re) {
				resp.Error = &frame.Error{Code: re.Code, Message: re.Message}
			} else {
				resp.Error = &frame.Error{Code: -1, Message: err.Error()}
			}
			break
		}
		raw, merr := marshalResult(result)
		if merr != nil {
			resp.Error = &frame.Error{Code: 500, Message: "cannot encode result: " + merr.Error()}
			break
		}
		resp.Result = raw
	}
	if f.ID == 0 {
		return nil
	}
	return resp
}

func marshalResult(v any) (json.RawMessage, error) {
	switch r := v.(type) {
	case nil:
		return json.RawMessage("null"), nil
	case json.RawMessage:
		if len(r) == 0 {
			return json.RawMessage("null"), nil
		}
		return r, nil
	}
	return json.Marshal(v)
}

func (r *Request) field(name string) (json.RawMessage, bool) {
	r.once.Do(func() {
		if len(r.Params) == 0 || bytes.TrimSpace(r.Params)[0] != '{' {
			return
		}
		_ = json.Unmarshal(r.Params, &r.fields)
	})
	v, ok := r.fields[name]
	if !ok || string(v) == "null" {
		return nil, false
	}
	return v, true
}

// Has reports whether the argument name is present and not null.
func (r *Request) Has(name string) bool {
	_, ok := r.field(name)
	return ok
}

// String returns a string argument; ok is false when absent or not a string.
func (r *Request) String(name string) (s string, ok bool) {
	v, ok := r.field(name)
	if !ok || v[0] != '"' {
		return "", false
	}
	if json.Unmarshal(v, &s) != nil {
		return "", false
	}
	return s, true
}

// Bool returns true only when the argument is the JSON literal true, the way
// the device's JSON scanner reads a bool.
func (r *Request) Bool(name string) bool {
	v, ok := r.field(name)
	return ok && string(v) == "true"
}

// Int returns an integer argument read the way the device's JSON scanner
// reads "%d": the token (a JSON number, or the text of a JSON string) goes
// through C's strtol with base 0 and counts only if strtol consumes all of
// it. So 300, "300", "0x12c" and "0454" (octal) all mean 300, while 3e2,
// 300.0, "300 " or "abc" are not integers. ok is false when the argument is
// absent or null; err is set when it is present but not an integer, which a
// device treats as not given.
func (r *Request) Int(name string) (v int64, ok bool, err error) {
	raw, ok := r.field(name)
	if !ok {
		return 0, false, nil
	}
	v, err = LenientInt(raw)
	if err != nil {
		return 0, true, fmt.Errorf("argument %q: %w", name, err)
	}
	return v, true, nil
}

// maxIntToken is the size of the device scanner's buffer for a number
// token: longer tokens are not converted.
const maxIntToken = 31

// LenientInt parses a JSON number or string token as the device's scanner
// does (strtol, base 0, whole token, 32-bit long).
func LenientInt(raw json.RawMessage) (int64, error) {
	tok := string(bytes.TrimSpace(raw))
	if strings.HasPrefix(tok, `"`) {
		if err := json.Unmarshal(raw, &tok); err != nil {
			return 0, fmt.Errorf("not an integer: %.40s", raw)
		}
	}
	if len(tok) > maxIntToken {
		return 0, fmt.Errorf("not an integer: %.40s… (too long)", tok)
	}
	v, rest, ok := strtol(tok)
	if !ok || rest != "" {
		return 0, fmt.Errorf("not an integer: %q", tok)
	}
	return v, nil
}

// strtol mimics C strtol(s, &end, 0) for a 32-bit long: leading white
// space, an optional sign, then 0x/0X hex, 0 octal or decimal digits; the
// value saturates. It returns the unparsed rest and whether any digit was
// read.
func strtol(s string) (int64, string, bool) {
	i := 0
	for i < len(s) && (s[i] == ' ' || (s[i] >= '\t' && s[i] <= '\r')) {
		i++
	}
	neg := false
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		neg = s[i] == '-'
		i++
	}
	base := int64(10)
	if i+1 < len(s) && s[i] == '0' && (s[i+1] == 'x' || s[i+1] == 'X') && i+2 < len(s) && isDigit(s[i+2], 16) {
		base, i = 16, i+2
	} else if i < len(s) && s[i] == '0' {
		base = 8
	}
	start := i
	var v int64
	for i < len(s) && isDigit(s[i], base) {
		v = v*base + digitVal(s[i])
		if v > math.MaxInt32+1 {
			v = math.MaxInt32 + 1 // saturate; sign applied below
		}
		i++
	}
	if i == start {
		return 0, s, false
	}
	if neg {
		v = -v
	}
	v = max(min(v, math.MaxInt32), math.MinInt32)
	return v, s[i:], true
}

func isDigit(c byte, base int64) bool {
	switch {
	case c >= '0' && c <= '9':
		return int64(c-'0') < base
	case base == 16 && c >= 'a' && c <= 'f', base == 16 && c >= 'A' && c <= 'F':
		return true
	}
	return false
}

func digitVal(c byte) int64 {
	switch {
	case c >= '0' && c <= '9':
		return int64(c - '0')
	case c >= 'a' && c <= 'f':
		return int64(c-'a') + 10
	}
	return int64(c-'A') + 10
}
