package serial

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

func listPorts() ([]PortInfo, error) { return listSysfsPorts("/sys", "/dev") }

// listSysfsPorts lists the ttys of sysfs (under root: /sys) that have a
// device behind them, as device nodes under dev, with the USB details of
// the USB device they belong to.
//
// go.bug.st/serial/enumerator reads the same sysfs attributes, but first
// opens every /dev/ttyS* to tell a real UART from a placeholder, and an
// open raises DTR and RTS, which resets a board wired to a built-in UART.
// Here a placeholder is told by its "type" attribute instead (0: no UART
// at that address), so nothing is opened.
func listSysfsPorts(root, dev string) ([]PortInfo, error) {
	class := filepath.Join(root, "class", "tty")
	ents, err := os.ReadDir(class)
	if err != nil {
		return nil, fmt.Errorf("cannot list serial ports: %w", err)
	}
	var out []PortInfo
	for _, e := range ents {
		name := e.Name()
		real, err := filepath.EvalSymlinks(filepath.Join(class, name, "device"))
		if err != nil {
			continue // a virtual terminal, a pty, the console: no device
		}
		if t, ok := sysfsAttr(filepath.Join(class, name, "type")); ok && t == "0" {
			continue // an 8250 placeholder without a UART
		}
		p := PortInfo{Name: filepath.Join(dev, strings.ReplaceAll(name, "!", "/"))}
		// The USB device is the nearest ancestor with an idVendor: above
		// the interface (ttyACM) or the usb-serial port (ttyUSB).
		top := filepath.Clean(root)
		for d := real; len(d) > len(top) && strings.HasPrefix(d, top); d = filepath.Dir(d) {
			vid, ok := sysfsAttr(filepath.Join(d, "idVendor"))
			if !ok {
				continue
			}
			pid, _ := sysfsAttr(filepath.Join(d, "idProduct"))
			p.USB, p.VID, p.PID = true, strings.ToUpper(vid), strings.ToUpper(pid)
			p.SerialNumber, _ = sysfsAttr(filepath.Join(d, "serial"))
			p.Manufacturer, _ = sysfsAttr(filepath.Join(d, "manufacturer"))
			p.Product, _ = sysfsAttr(filepath.Join(d, "product"))
			break
		}
		out = append(out, p)
	}
	return out, nil
}

// sysfsAttr reads the first line of a sysfs attribute.
func sysfsAttr(path string) (string, bool) {
	f, err := os.Open(path)
	if err != nil {
		return "", false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	if !s.Scan() {
		return "", s.Err() == nil
	}
	return strings.TrimSpace(s.Text()), true
}
