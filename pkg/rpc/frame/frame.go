// Package frame defines the Mongoose OS RPC frame (one JSON object per
// message) and its ASCII-only encoding. It is shared by pkg/rpc and by every
// transport so that the frame is defined once.
//
// See docs/protocol.md, "Frames", for the field list.
package frame

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// Frame is one RPC message, request or response.
//
// Fields the protocol defines but this tool never sends (v, nr, deadline,
// timeout, trace) are accepted on input and ignored, as are unknown fields.
type Frame struct {
	// Fields are in the order mos writes them, so that the encoded bytes
	// match a capture of mos.
	Src    string          `json:"src,omitempty"`
	Dst    string          `json:"dst,omitempty"`
	Key    string          `json:"key,omitempty"`
	Tag    string          `json:"tag,omitempty"`
	ID     int64           `json:"id,omitempty"`
	Method string          `json:"method,omitempty"`
	Params json.RawMessage `json:"params,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  *Error          `json:"error,omitempty"`
	Auth   *Auth           `json:"auth,omitempty"`
	// Args is the legacy name of Params; devices accept either. Use
	// ParamsOrArgs to read whichever is present.
	Args json.RawMessage `json:"args,omitempty"`
	// AuthRaw is the "auth" member as received (Parse sets it, Marshal
	// ignores it): a device reads its fields as text whatever their JSON
	// type, and tells a missing field from an empty one.
	AuthRaw json.RawMessage `json:"-"`
}

// Error is the error object of a response frame. Code 0 means success.
type Error struct {
	Code    int    `json:"code"`
	Message string `json:"message,omitempty"`
}

// Auth is the in-frame digest authentication response (docs/protocol.md,
// "Authentication").
type Auth struct {
	Realm     string `json:"realm"`
	Username  string `json:"username"`
	Nonce     int64  `json:"nonce"`
	CNonce    int64  `json:"cnonce"`
	Algorithm string `json:"algorithm,omitempty"`
	Response  string `json:"response"`
}

// MaxSize is the default frame size limit of a real device
// (rpc.max_frame_size). Larger frames are dropped by the device.
const MaxSize = 4096

// IsRequest reports whether f is a request (it names a method).
func (f *Frame) IsRequest() bool { return f.Method != "" }

// ParamsOrArgs returns the request arguments, preferring "params" over the
// legacy "args". It returns nil when neither is present or both are null.
func (f *Frame) ParamsOrArgs() json.RawMessage {
	if len(f.Params) > 0 && string(f.Params) != "null" {
		return f.Params
	}
	if len(f.Args) > 0 && string(f.Args) != "null" {
		return f.Args
	}
	return nil
}

// wireFrame mirrors Frame for decoding, with a lenient id.
type wireFrame struct {
	ID     json.RawMessage `json:"id"`
	Src    json.RawMessage `json:"src"`
	Dst    json.RawMessage `json:"dst"`
	Tag    json.RawMessage `json:"tag"`
	Key    json.RawMessage `json:"key"`
	Method json.RawMessage `json:"method"`
	Params json.RawMessage `json:"params"`
	Args   json.RawMessage `json:"args"`
	Result json.RawMessage `json:"result"`
	Error  json.RawMessage `json:"error"`
	Auth   json.RawMessage `json:"auth"`
}

// ErrNotObject is returned by Parse for input that is not a JSON object.
var ErrNotObject = errors.New("frame is not a JSON object")

// Parse decodes one frame. It is lenient where devices are: the id may be a
// number (integral float notation included) or a numeric string; string
// fields of the wrong type are ignored; unknown fields are ignored. It fails
// only on input that is not a JSON object, or an id or error that cannot be
// understood.
func Parse(data []byte) (*Frame, error) {
	data = bytes.TrimSpace(data)
	if len(data) == 0 || data[0] != '{' {
		return nil, ErrNotObject
	}
	var w wireFrame
	if err := json.Unmarshal(data, &w); err != nil {
		return nil, fmt.Errorf("bad frame: %w", err)
	}
	f := &Frame{}
	if len(w.ID) > 0 && string(w.ID) != "null" {
		id, err := parseID(w.ID)
		if err != nil {
			return nil, err
		}
		f.ID = id
	}
	f.Src = looseString(w.Src)
	f.Dst = looseString(w.Dst)
	f.Tag = looseString(w.Tag)
	f.Key = looseString(w.Key)
	f.Method = looseString(w.Method)
	f.Params = keep(w.Params)
	f.Args = keep(w.Args)
	f.Result = keep(w.Result)
	if len(w.Error) > 0 && string(w.Error) != "null" {
		e, err := parseError(w.Error)
		if err != nil {
			return nil, err
		}
		f.Error = e
	}
	if len(w.Auth) > 0 && string(w.Auth) != "null" {
		f.AuthRaw = keep(w.Auth)
		var a Auth
		if err := json.Unmarshal(w.Auth, &a); err == nil {
			f.Auth = &a
		}
	}
	return f, nil
}

func keep(r json.RawMessage) json.RawMessage {
	if len(r) == 0 {
		return nil
	}
	return append(json.RawMessage(nil), r...)
}

func looseString(r json.RawMessage) string {
	if len(r) == 0 || r[0] != '"' {
		return ""
	}
	var s string
	if json.Unmarshal(r, &s) != nil {
		return ""
	}
	return s
}

func parseID(r json.RawMessage) (int64, error) {
	s := string(r)
	if r[0] == '"' {
		if err := json.Unmarshal(r, &s); err != nil {
			return 0, fmt.Errorf("bad frame id %s", r)
		}
	}
	if v, err := strconv.ParseInt(s, 10, 64); err == nil {
		return v, nil
	}
	fv, err := strconv.ParseFloat(s, 64)
	if err != nil || fv != float64(int64(fv)) {
		return 0, fmt.Errorf("bad frame id %.40s", r)
	}
	return int64(fv), nil
}

func parseError(r json.RawMessage) (*Error, error) {
	var w struct {
		Code    json.RawMessage `json:"code"`
		Message json.RawMessage `json:"message"`
	}
	if err := json.Unmarshal(r, &w); err != nil {
		// Not an object: treat a bare string as a message with a generic code.
		var s string
		if json.Unmarshal(r, &s) == nil {
			return &Error{Code: -1, Message: s}, nil
		}
		return nil, fmt.Errorf("bad error object in frame: %w", err)
	}
	e := &Error{}
	if len(w.Code) > 0 && string(w.Code) != "null" {
		c, err := parseID(w.Code)
		if err != nil {
			return nil, fmt.Errorf("bad error code %.40s", w.Code)
		}
		e.Code = int(c)
	}
	if len(w.Message) > 0 {
		if w.Message[0] == '"' {
			_ = json.Unmarshal(w.Message, &e.Message)
		} else if string(w.Message) != "null" {
			e.Message = string(w.Message)
		}
	}
	return e, nil
}

// Marshal encodes f as compact, ASCII-only JSON, fields in mos's order (every rune >= 0x80 is
// escaped as \uXXXX), because a real device's UART channel discards its
// receive buffer on any byte >= 0x80.
func Marshal(f *Frame) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // as mos: '<', '>' and '&' stay as they are
	if err := enc.Encode(f); err != nil {
		return nil, err
	}
	return ASCII(bytes.TrimSuffix(buf.Bytes(), []byte("\n"))), nil
}

// ASCII rewrites JSON text so that it contains only ASCII bytes: every
// non-ASCII rune is escaped as \uXXXX (a surrogate pair above U+FFFF).
// Invalid UTF-8 bytes become \ufffd. The input must be valid JSON produced by
// encoding/json, where non-ASCII bytes can only occur inside strings.
func ASCII(b []byte) []byte {
	i := 0
	for i < len(b) && b[i] < utf8.RuneSelf {
		i++
	}
	if i == len(b) {
		return b
	}
	out := make([]byte, 0, len(b)+16)
	out = append(out, b[:i]...)
	const hex = "0123456789abcdef"
	esc := func(r rune) {
		out = append(out, '\\', 'u', hex[r>>12&0xf], hex[r>>8&0xf], hex[r>>4&0xf], hex[r&0xf])
	}
	for i < len(b) {
		c := b[i]
		if c < utf8.RuneSelf {
			out = append(out, c)
			i++
			continue
		}
		r, size := utf8.DecodeRune(b[i:])
		i += size
		if r >= 0x10000 {
			r -= 0x10000
			esc(0xd800 + (r>>10)&0x3ff)
			esc(0xdc00 + r&0x3ff)
			continue
		}
		esc(r)
	}
	return out
}
