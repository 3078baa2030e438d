// Package transport defines the frame-level connection between otactl and a
// device, and a registry that picks a transport by the scheme of a --port
// URL. Each transport lives in a subpackage and provides both ends: the
// client Dial used by otactl and the device-side Serve used by the emulator,
// so that every framing rule is written once and both ends test each other.
package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"

	"github.com/otactl/otactl/pkg/rpc/frame"
)

// Conn is a frame-level connection to a device (client side).
//
// Send and Recv may be called concurrently with each other; Send may be
// called from several goroutines at once. Close is idempotent, and unblocks
// pending Send and Recv calls, which then return ErrClosed.
type Conn interface {
	// Send writes one frame. It honours ctx for as long as it blocks. A
	// transport that gets the answer within Send (HTTP) returns a
	// *NotRPCError when that answer is not an RPC frame.
	Send(ctx context.Context, f *frame.Frame) error
	// Recv returns the next frame from the device. It returns ctx.Err() when
	// ctx ends first, ErrClosed after Close, or the error that broke the link.
	// An answer that is not an RPC frame comes as a *NotRPCError
	// (errors.Is(err, ErrNotRPC)); that one is not permanent: the link still
	// works and Recv may be called again.
	Recv(ctx context.Context) (*frame.Frame, error)
	// Close releases the connection.
	Close() error
}

// Addressed is implemented by connections that reach a device by its id
// through a shared medium (MQTT through a broker), where more than one
// device can answer to the same id. The RPC client watches such
// connections for a second answer (docs/transports.md).
type Addressed interface {
	Conn
	DeviceID() string
}

// Handler answers requests on the device side. HandleFrame is called
// concurrently, once per request frame, and may block (OTA.Update defers its
// reply until the update finished). It returns the reply frame, or nil for no
// reply (a request without id, or one addressed to another device).
type Handler interface {
	HandleFrame(ctx context.Context, req *frame.Frame) *frame.Frame
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, req *frame.Frame) *frame.Frame

// HandleFrame calls fn(ctx, req).
func (fn HandlerFunc) HandleFrame(ctx context.Context, req *frame.Frame) *frame.Frame {
	return fn(ctx, req)
}

// Credentials are RPC credentials (mos --rpc-creds user:pass).
type Credentials struct {
	User     string
	Password string
}

// Options carry what every transport may need on either end. Zero values
// mean defaults.
type Options struct {
	// Creds are used for authentication where the transport does it itself
	// (HTTP digest, MQTT user/pass) and by the RPC client for in-frame digest.
	Creds *Credentials
	// TLS is used by the TLS forms (https, wss, mqtts, and serving them).
	TLS *tls.Config
	// Logger receives diagnostics (frames at Debug level with --verbose).
	// Nil means no logging. Never log credentials.
	Logger *slog.Logger
	// DeviceLog receives the device's log output that a transport sees
	// between frames (serial). Nil discards it.
	DeviceLog func(line string)
	// Serial settings; URL query parameters override them.
	BaudRate      int  // default 115200
	HWFlowControl bool // RTS/CTS
	// ClientID is the MQTT client id; empty means random per connection.
	ClientID string
	// MaxFrameSize bounds frames read from the other end. On the client the
	// default is DefaultMaxReplySize (64 KiB): a larger reply is reported as
	// not an RPC frame (ErrNotRPC). Device sides default to frame.MaxSize,
	// as a real device does.
	MaxFrameSize int
}

// ErrAuth is wrapped by every error that means the device (or the MQTT
// broker) refused the credentials or wanted some: an HTTP 401, a refused
// WebSocket handshake, a refused MQTT connect, a failed in-frame digest.
var ErrAuth = errors.New("authentication failed")

// ErrClosed is returned by Send and Recv after Close.
var ErrClosed = errors.New("connection closed")

// DefaultMaxFrameSize is the largest message a device side reads before it
// looks at it (its own frame limit is checked after that).
const DefaultMaxFrameSize = 1 << 20

// MaxFrame returns o.MaxFrameSize or, for a client, DefaultMaxReplySize.
func (o Options) MaxFrame() int {
	if o.MaxFrameSize > 0 {
		return o.MaxFrameSize
	}
	return DefaultMaxReplySize
}

// reAuthResponse matches the digest response of an in-frame "auth" object.
var reAuthResponse = regexp.MustCompile(`("response"\s*:\s*)"(?:[^"\\]|\\.)*"`)

// RedactAuth hides the digest response of an in-frame "auth" object in a
// frame's text: whoever reads it could replay the call for as long as its
// nonce is valid (docs/security.md).
func RedactAuth(s string) string {
	if !strings.Contains(s, `"response"`) {
		return s
	}
	return reAuthResponse.ReplaceAllString(s, `${1}"xxxxx"`)
}

// DebugFrameMax is how much of a frame DebugFrame shows; the rest (the
// base64 of a push chunk, say) is summarised by its length.
const DebugFrameMax = 300

// DebugFrame logs a frame at debug level with its direction, if a logger is
// set that logs that level. Frames longer than DebugFrameMax are cut, saying
// how long they were. Otherwise it costs nothing: it runs for every frame.
func (o Options) DebugFrame(dir string, data []byte) {
	if o.Logger == nil || !o.Logger.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	s := RedactAuth(string(data))
	if len(s) > DebugFrameMax {
		s = fmt.Sprintf("%s… (%d bytes)", s[:DebugFrameMax], len(data))
	}
	o.Logger.Debug("frame", "dir", dir, "data", s)
}
