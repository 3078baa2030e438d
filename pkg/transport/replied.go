package transport

import (
	"context"
	"sync"
)

// A device answers a call first and acts on it afterwards: a Mongoose OS
// device sends the reply to OTA.Update, OTA.End, OTA.Revert or Sys.Reboot
// and reboots about 100 ms later (docs/emulator.md, "Reboots"). A handler
// that must not act before its reply is on the link asks to hear when it
// is (AfterReply); each transport's device side reports it (WithReplyNotice).

type replyNotice struct {
	mu   sync.Mutex
	done bool
	fns  []func()
}

type replyNoticeKey struct{}

// WithReplyNotice is for a transport's device side: it returns ctx, to pass
// to Handler.HandleFrame for one request, and replied, which the transport
// calls once the reply has been handed to the link (written to the
// connection or the serial port, published to the broker), or once it knows
// no reply will be sent (none was returned, the link broke, writing failed).
// replied runs the functions registered with AfterReply; calling it again
// does nothing. A transport must call it on every path.
func WithReplyNotice(ctx context.Context) (context.Context, func()) {
	n := &replyNotice{}
	return context.WithValue(ctx, replyNoticeKey{}, n), n.fire
}

func (n *replyNotice) fire() {
	n.mu.Lock()
	if n.done {
		n.mu.Unlock()
		return
	}
	n.done = true
	fns := n.fns
	n.fns = nil
	n.mu.Unlock()
	for _, f := range fns {
		f()
	}
}

// AfterReply is for a device-side Handler: it arranges for fn to run once
// the transport has handed the reply to the request whose ctx this is to
// the link (or given up on it); fn runs at once when that already
// happened. It reports false, and does not run fn, when ctx carries no
// notice (a transport that does not report it): the handler then takes the
// reply as sent when HandleFrame returns.
func AfterReply(ctx context.Context, fn func()) bool {
	n, _ := ctx.Value(replyNoticeKey{}).(*replyNotice)
	if n == nil {
		return false
	}
	n.mu.Lock()
	if n.done {
		n.mu.Unlock()
		fn()
		return true
	}
	n.fns = append(n.fns, fn)
	n.mu.Unlock()
	return true
}
