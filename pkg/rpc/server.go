package rpc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
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
		resp.Error = &frame.Error{Code: 404, Message: "No handler for " + f.Method}
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

// Int returns an integer argument read leniently, as the device does: a
// JSON number, or a string holding a decimal or 0x-prefixed hex integer
// ("300", "0x12c"). ok is false when the argument is absent; err is set when
// it is present but not an integer.
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

// LenientInt parses a JSON number or numeric string as an integer.
func LenientInt(raw json.RawMessage) (int64, error) {
	s := strings.TrimSpace(string(raw))
	if strings.HasPrefix(s, `"`) {
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, fmt.Errorf("not an integer: %.40s", raw)
		}
		s = strings.TrimSpace(s)
		neg := false
		t := s
		if strings.HasPrefix(t, "-") {
			neg, t = true, t[1:]
		} else if strings.HasPrefix(t, "+") {
			t = t[1:]
		}
		var v int64
		var err error
		if strings.HasPrefix(t, "0x") || strings.HasPrefix(t, "0X") {
			v, err = strconv.ParseInt(t[2:], 16, 64)
		} else {
			v, err = strconv.ParseInt(t, 10, 64)
		}
		if err != nil || t == "" {
			return 0, fmt.Errorf("not an integer: %q", s)
		}
		if neg {
			v = -v
		}
		return v, nil
	}
	if v, err := strconv.ParseInt(s, 10, 64); err == nil {
		return v, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f != math.Trunc(f) || math.Abs(f) > 1<<53 {
		return 0, fmt.Errorf("not an integer: %.40s", raw)
	}
	return int64(f), nil
}
