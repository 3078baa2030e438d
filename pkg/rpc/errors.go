package rpc

import (
	"errors"
	"fmt"

	"github.com/otactl/otactl/pkg/transport"
)

// Error is an error reply from the device: an RPC "error" object with a
// non-zero code. Use errors.As to get at it:
//
//	var re *rpc.Error
//	if errors.As(err, &re) && re.Code == 404 { ... }
type Error struct {
	Method  string // the method called, when known
	Code    int
	Message string
}

func (e *Error) Error() string {
	msg := e.Message
	if msg == "" {
		msg = "no message"
	}
	if e.Method != "" {
		return fmt.Sprintf("%s: device returned error %d: %s", e.Method, e.Code, msg)
	}
	return fmt.Sprintf("device returned error %d: %s", e.Code, msg)
}

// Errorf returns an *Error with code and a formatted message, for handlers.
func Errorf(code int, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// CodeNoHandler is the code of the reply to a method the device does not
// have (NoHandler).
const CodeNoHandler = 404

// NoHandler is the device's reply to a call of a method it does not have:
// 404 "No handler for METHOD".
func NoHandler(method string) *Error {
	return &Error{Code: CodeNoHandler, Message: "No handler for " + method}
}

// LinkError is a failure of the connection to the device while calling a
// method: the request could not be sent, the link dropped, or the device did
// not answer before the context ended. The device said nothing about the
// call itself.
type LinkError struct {
	Method string
	Err    error
}

func (e *LinkError) Error() string { return e.Method + ": " + e.Err.Error() }
func (e *LinkError) Unwrap() error { return e.Err }

// ErrAuth is wrapped by errors that mean the device refused the credentials
// (or wanted some and none were given). It is transport.ErrAuth, so that a
// refusal at the transport level (HTTP 401, MQTT connect) matches too.
var ErrAuth = transport.ErrAuth

// IsNotFound reports whether err is the device's "no such method" reply.
func IsNotFound(err error) bool {
	var re *Error
	return errors.As(err, &re) && re.Code == 404
}

// ErrNotRPC is matched by every error meaning that the device answered
// something that is not an RPC frame (transport.ErrNotRPC). The concrete
// error from a call is a *BadReplyError wrapping a *transport.NotRPCError.
var ErrNotRPC = transport.ErrNotRPC

// BadReplyError is a call whose answer could not be read as an RPC reply:
// the device (or whatever answers at that address) sent an HTTP error page,
// text, a JSON value that is not a frame, or a reply larger than the
// client's bound. The link works; the device said nothing otactl can use
// about the call. errors.Is(err, ErrNotRPC) holds.
type BadReplyError struct {
	Method string
	Err    error // a *transport.NotRPCError
}

func (e *BadReplyError) Error() string { return e.Method + ": " + e.Err.Error() }
func (e *BadReplyError) Unwrap() error { return e.Err }

// ErrDuplicateReply is matched by every error meaning that more than one
// device answers at the address: a request was answered twice, or replies
// came from two senders. The concrete error is a *DuplicateReplyError.
var ErrDuplicateReply = errors.New("more than one device answered")

// DuplicateReplyError says that more than one device answers at the
// address the client talks to (two devices with one id on an MQTT broker).
// A client that saw it fails every later call with it.
type DuplicateReplyError struct {
	ID       int64    // the request that was answered twice
	Method   string   // its method, when known
	DeviceID string   // the device id the requests went to, or the replies' src
	Srcs     []string // two different senders, when the replies named them
}

func (e *DuplicateReplyError) Error() string {
	id := e.DeviceID
	if id == "" {
		id = "(unknown)"
	}
	what := fmt.Sprintf("request %d", e.ID)
	if e.Method != "" {
		what = fmt.Sprintf("request %d (%s)", e.ID, e.Method)
	}
	var msg string
	if len(e.Srcs) == 2 {
		msg = fmt.Sprintf("two devices answered for device id %s (replies from %q and %q, the second to %s): more than one device answers to this id", id, e.Srcs[0], e.Srcs[1], what)
	} else {
		msg = fmt.Sprintf("two devices answered %s for device id %s: more than one device uses this id on the broker", what, id)
	}
	return msg + "; give each device a unique id (device.id) and run the command again"
}

// Is makes errors.Is(err, ErrDuplicateReply) true.
func (e *DuplicateReplyError) Is(target error) bool { return target == ErrDuplicateReply }
