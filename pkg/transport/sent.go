package transport

import "context"

type sentKey struct{}

// WithSent returns a copy of ctx under which Conn.Send calls fn once the
// frame is committed to the link, before Send waits for anything else (an
// HTTP reply, an MQTT PUBACK). Frames whose Sends were started one after
// another, each once the previous one's fn ran, leave in that order; that is
// how the RPC client keeps several requests in flight in order
// (rpc.Client.Start). A transport whose Send returns as soon as the frame is
// written need not call fn: its return means the same.
func WithSent(ctx context.Context, fn func()) context.Context {
	return context.WithValue(ctx, sentKey{}, fn)
}

// Sent calls the function that WithSent put in ctx, if any. Transports call
// it from Send; it may be called more than once (the caller makes it
// idempotent).
func Sent(ctx context.Context) {
	if fn, ok := ctx.Value(sentKey{}).(func()); ok && fn != nil {
		fn()
	}
}
