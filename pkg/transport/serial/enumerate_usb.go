//go:build !darwin || cgo

package serial

import "go.bug.st/serial/enumerator"

func listPorts() ([]PortInfo, error) {
	ports, err := enumerator.GetDetailedPortsList()
	if err != nil {
		return nil, err
	}
	out := make([]PortInfo, 0, len(ports))
	for _, p := range ports {
		out = append(out, PortInfo{Name: p.Name, IsUSB: p.IsUSB, VID: p.VID, PID: p.PID, Product: p.Product, SerialNumber: p.SerialNumber})
	}
	return out, nil
}
