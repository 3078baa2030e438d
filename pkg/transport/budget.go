package transport

import "github.com/otactl/otactl/pkg/rpc/frame"

// FrameBudget is what a connection lets a request frame be: the largest
// frame the device takes over this link, and what the transport itself
// writes into every request. A caller that fills frames with data (a
// push's OTA.Write) sizes the data so that the whole frame fits
// (docs/protocol.md, "Frame size").
type FrameBudget struct {
	// Limit is the largest request frame, in bytes of its JSON, that the
	// device takes over this link (a device drops larger frames).
	Limit int
	// Src and Dst are what the transport writes into every request's
	// "src" and "dst"; empty: the client's own are sent.
	Src, Dst string
}

// Budgeted is implemented by connections that know their frame budget.
// Every transport of otactl implements it; a connection that does not is
// taken to have DefaultFrameBudget.
type Budgeted interface {
	FrameBudget() FrameBudget
}

// DefaultFrameBudget is a device's default rpc.max_frame_size (4096 bytes),
// with nothing added by the transport: what HTTP and WebSocket carry.
func DefaultFrameBudget() FrameBudget { return FrameBudget{Limit: frame.MaxSize} }

// BudgetOf returns c's frame budget: its own when it reports one, else
// DefaultFrameBudget.
func BudgetOf(c Conn) FrameBudget {
	if b, ok := c.(Budgeted); ok {
		fb := b.FrameBudget()
		if fb.Limit <= 0 {
			fb.Limit = frame.MaxSize
		}
		return fb
	}
	return DefaultFrameBudget()
}
