//go:build !linux

package mqtt

import "net"

// quickAckOn: see quickack_linux.go.
var quickAckOn = true

// quickAck is Linux's TCP_QUICKACK (quickack_linux.go); elsewhere the
// connection is used as it is.
func quickAck(c net.Conn) net.Conn { return c }
