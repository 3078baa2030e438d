package ws

import "github.com/otactl/otactl/pkg/transport"

// FrameBudget is the device's frame limit: one text message per frame,
// with the client's src and dst.
func (c *Conn) FrameBudget() transport.FrameBudget { return transport.DefaultFrameBudget() }
