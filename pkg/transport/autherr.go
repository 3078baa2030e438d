package transport

import (
	"errors"
	"fmt"
)

// ErrForbidden is matched by an *AuthError of kind AuthForbidden: the
// device knows the user but its ACL denies the method (error 403). It
// matches ErrAuth too.
var ErrForbidden = errors.New("forbidden by the device's ACL")

// AuthKind says how authentication failed.
type AuthKind int

const (
	// AuthRequired: the device wants credentials and none were given.
	AuthRequired AuthKind = iota
	// AuthRefused: the device refused the credentials given (wrong
	// password, or a user not in its rpc.auth_file).
	AuthRefused
	// AuthForbidden: the device's ACL denies the method (error 403
	// "unauthorized"), to this user or to every caller.
	AuthForbidden
	// AuthMalformed: the device could not use the authentication sent
	// (error 400 "bad request": a realm or algorithm other than its own).
	AuthMalformed
)

// AuthError is an authentication or authorisation failure, at whatever
// level it happened (in-frame digest, HTTP digest, WebSocket handshake,
// MQTT broker). It matches ErrAuth, and ErrForbidden for AuthForbidden.
// Its message names the user and the device, never the password.
type AuthError struct {
	Kind AuthKind
	// User is the user name presented; empty when none was.
	User string
	// Method is the RPC method called, when known.
	Method string
	// Where is the device's address, secrets redacted.
	Where string
	// How is the mechanism: "in-frame digest", "HTTP digest",
	// "WebSocket handshake", "MQTT broker".
	How string
	// Realm is the device's realm (rpc.auth_domain), when known.
	Realm string
	// Err is the underlying error (the device's reply), if any.
	Err error
}

func (e *AuthError) Error() string {
	where := "the device"
	if e.Where != "" {
		where = "the device at " + e.Where
	}
	how := e.How
	if e.Realm != "" {
		if how != "" {
			how += ", "
		}
		how += fmt.Sprintf("realm %q", e.Realm)
	}
	if how != "" {
		how = " (" + how + ")"
	}
	prefix := ""
	if e.Method != "" {
		prefix = e.Method + ": "
	}
	var msg string
	switch e.Kind {
	case AuthRequired:
		msg = fmt.Sprintf("%s%s requires authentication%s: pass --rpc-creds user:pass (or @FILE, or set OTACTL_RPC_CREDS)", prefix, where, how)
	case AuthRefused:
		msg = fmt.Sprintf("%s%s refused user %q%s: wrong password, or no such user in its rpc.auth_file: check --rpc-creds", prefix, where, e.User, how)
	case AuthForbidden:
		method := e.Method
		if method == "" {
			method = "this method"
		}
		if e.User != "" {
			msg = fmt.Sprintf("user %q may not call %s on %s: its ACL (rpc.acl) denies it (error 403 \"unauthorized\"): ask for access, or use a user the ACL allows", e.User, method, where)
		} else {
			msg = fmt.Sprintf("no one may call %s on %s: its ACL (rpc.acl) allows no caller for it on this channel (error 403 \"unauthorized\")", method, where)
		}
	case AuthMalformed:
		msg = fmt.Sprintf("%s%s could not use the authentication sent for user %q%s (error 400 \"bad request\"): its realm or digest algorithm (rpc.auth_domain, rpc.auth_algo) is not the one it announced; run the command again", prefix, where, e.User, how)
	default:
		msg = fmt.Sprintf("%sauthentication with %s failed%s", prefix, where, how)
	}
	return msg
}

// Unwrap returns the underlying error.
func (e *AuthError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrAuth) true, and errors.Is(err, ErrForbidden)
// for AuthForbidden.
func (e *AuthError) Is(target error) bool {
	return target == ErrAuth || (target == ErrForbidden && e.Kind == AuthForbidden)
}

// Reason is the machine-readable reason of the failure (the "reason" of
// otactl's --json error document): auth_required, auth_refused, forbidden
// or auth_malformed.
func (e *AuthError) Reason() string {
	switch e.Kind {
	case AuthRequired:
		return "auth_required"
	case AuthRefused:
		return "auth_refused"
	case AuthForbidden:
		return "forbidden"
	case AuthMalformed:
		return "auth_malformed"
	}
	return "auth_failed"
}

// AuthenticatedConn is implemented by connections that authenticate at the
// transport level (HTTP digest, a WebSocket handshake): AuthenticatedUser
// returns the user the device accepted there, or "" when it accepted none.
// The RPC client names that user when the device's ACL refuses a call.
type AuthenticatedConn interface {
	AuthenticatedUser() string
}
