package serial

import "sync"

// flowGate implements XON/XOFF on the writing side: writers wait on ready()
// before each chunk; the reader pauses and resumes the gate as it sees XOFF
// and XON.
type flowGate struct {
	mu   sync.Mutex
	open chan struct{} // closed while writing is allowed
}

func newFlowGate() *flowGate {
	g := &flowGate{open: make(chan struct{})}
	close(g.open)
	return g
}

// set pauses (XOFF) or resumes (XON) writing.
func (g *flowGate) set(paused bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-g.open: // currently open
		if paused {
			g.open = make(chan struct{})
		}
	default: // currently paused
		if !paused {
			close(g.open)
		}
	}
}

// ready returns a channel that is closed while writing is allowed.
func (g *flowGate) ready() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.open
}

// paused reports whether writing is paused.
func (g *flowGate) paused() bool {
	select {
	case <-g.ready():
		return false
	default:
		return true
	}
}
