//go:build !linux

package mqtttest

import "errors"

// TCPConns returns how many established TCP connections the process pid
// holds to addr; it needs Linux's /proc.
func TCPConns(pid int, addr string) (int, error) {
	return 0, errors.New("TCPConns: needs Linux /proc")
}
