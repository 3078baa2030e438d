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
