package mqtt

import (
	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
)

// FrameBudget reports the device's frame limit, and the src and dst that
// Send writes into every request: ReplySrc(deviceID, clientID) and the
// device id. The topic travels outside the frame and does not count.
func (c *conn) FrameBudget() transport.FrameBudget {
	return transport.FrameBudget{Limit: frame.MaxSize, Src: c.src, Dst: c.deviceID}
}
