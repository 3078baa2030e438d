package serial

import "sort"

// PortInfo describes a serial port found on this machine: its device name
// and, for a USB serial adapter or a board's own USB port, the USB vendor
// and product ids and strings and the serial number.
type PortInfo struct {
	// Name is what --port takes: /dev/ttyUSB0, /dev/cu.usbserial-0001, COM3.
	Name string `json:"name"`
	// USB is true for a USB serial port; the fields below are set only then
	// (each may be empty when the device does not report it).
	USB bool `json:"usb"`
	// VID and PID are the USB vendor and product ids, 4 upper-case hex
	// digits (10C4, EA60).
	VID string `json:"vid,omitempty"`
	PID string `json:"pid,omitempty"`
	// SerialNumber is the USB serial number string.
	SerialNumber string `json:"serial_number,omitempty"`
	// Manufacturer and Product are the USB strings (Silicon Labs, CP2102
	// USB to UART Bridge Controller).
	Manufacturer string `json:"manufacturer,omitempty"`
	Product      string `json:"product,omitempty"`
}

// ListPorts lists the serial ports of this machine, sorted by name, without
// opening any of them (opening a port may pulse DTR and RTS, which resets
// many boards). On Linux it reads sysfs; elsewhere it asks
// go.bug.st/serial/enumerator (on macOS built without cgo, names only: no
// USB details).
func ListPorts() ([]PortInfo, error) {
	ports, err := listPorts()
	if err != nil {
		return nil, err
	}
	sort.Slice(ports, func(i, j int) bool { return ports[i].Name < ports[j].Name })
	return ports, nil
}
