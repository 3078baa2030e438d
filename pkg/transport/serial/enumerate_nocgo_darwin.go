//go:build darwin && !cgo

package serial

import "go.bug.st/serial"

// listPorts without cgo on macOS: the enumerator's USB details come from
// IOKit through cgo, so only the names of the ports (/dev/cu.*, /dev/tty.*).
func listPorts() ([]PortInfo, error) {
	names, err := serial.GetPortsList()
	if err != nil {
		return nil, err
	}
	out := make([]PortInfo, 0, len(names))
	for _, n := range names {
		out = append(out, PortInfo{Name: n})
	}
	return out, nil
}
