package serial

import (
	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
)

// FrameMargin is what a serial frame keeps below the device's frame limit:
// the device's UART receive buffer (rpc.max_frame_size + 6 bytes) holds the
// frame's JSON together with its 8-digit CRC and part of the closing
// delimiter, so a JSON of the full 4096 bytes would not fit.
const FrameMargin = 16

// FrameBudget is the device's frame limit less FrameMargin, with the
// client's src and dst.
func (c *conn) FrameBudget() transport.FrameBudget {
	return transport.FrameBudget{Limit: frame.MaxSize - FrameMargin}
}
