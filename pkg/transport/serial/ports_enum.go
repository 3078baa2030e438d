//go:build !linux && (!darwin || cgo)

package serial

import (
	"fmt"

	"go.bug.st/serial/enumerator"
)

func listPorts() ([]PortInfo, error) {
	ds, err := enumerator.GetDetailedPortsList()
	if err != nil {
		return nil, fmt.Errorf("cannot list serial ports: %w", err)
	}
	out := make([]PortInfo, 0, len(ds))
	for _, d := range ds {
		if d == nil || d.Name == "" {
			continue
		}
		p := PortInfo{Name: d.Name}
		if d.IsUSB {
			p.USB, p.VID, p.PID, p.SerialNumber = true, d.VID, d.PID, d.SerialNumber
			p.Manufacturer, p.Product = d.Manufacturer, d.Product
		}
		out = append(out, p)
	}
	return out, nil
}
