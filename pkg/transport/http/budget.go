package httptransport

import "github.com/otactl/otactl/pkg/transport"

// FrameBudget is the device's frame limit: the request body is the frame
// (and a newline the device ignores), with the client's src and dst.
func (c *Conn) FrameBudget() transport.FrameBudget { return transport.DefaultFrameBudget() }
