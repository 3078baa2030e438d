//go:build darwin && !cgo

package serial

import (
	"fmt"
	"strings"

	"go.bug.st/serial"
)

// listPorts without cgo on macOS: go.bug.st/serial/enumerator needs IOKit
// through cgo, so only the names are known. A /dev/cu.usb* name is a USB
// port (its ids unknown); its /dev/tty.usb* twin (the same port, opened
// for dial-in) is listed but not counted as one, so that --port auto sees
// one candidate per device.
func listPorts() ([]PortInfo, error) {
	names, err := serial.GetPortsList()
	if err != nil {
		return nil, fmt.Errorf("cannot list serial ports: %w", err)
	}
	out := make([]PortInfo, 0, len(names))
	for _, n := range names {
		out = append(out, PortInfo{Name: n, USB: strings.HasPrefix(n, "/dev/cu.usb")})
	}
	return out, nil
}
