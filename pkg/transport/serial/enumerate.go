package serial

// PortInfo describes a serial port of this machine, as ListPorts finds it.
type PortInfo struct {
	// Name is the port's path (/dev/ttyUSB0, /dev/cu.usbserial-1410, COM3).
	Name string
	// IsUSB is true for a USB serial adapter; VID and PID are then its
	// vendor and product ids (hex, as the system gives them), Product its
	// product name and SerialNumber its serial number, when known.
	IsUSB        bool
	VID, PID     string
	Product      string
	SerialNumber string
}

// ListPorts returns the serial ports of this machine, with the USB details
// of each adapter where the system tells them (go.bug.st/serial's
// enumerator). On macOS that needs cgo (IOKit); a binary built without it
// (the static release builds, Makefile `release`) lists the ports by name
// only, with IsUSB false.
func ListPorts() ([]PortInfo, error) { return listPorts() }
