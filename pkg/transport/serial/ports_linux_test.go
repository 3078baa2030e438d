package serial

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// A sysfs tree as the kernel lays it out: class/tty/NAME links to the tty
// under its device; USB details sit on the USB device above the interface.
func TestListSysfsPorts(t *testing.T) {
	root := t.TempDir()
	write := func(path, content string) {
		t.Helper()
		p := filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	link := func(target, path string) {
		t.Helper()
		p := filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join(root, target), p); err != nil {
			t.Fatal(err)
		}
	}
	mkdir := func(path string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(root, path), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// A CP2102 (usb-serial: the tty's device is the usb-serial port, two
	// levels below the USB device).
	cp := "devices/pci0000:00/usb1/1-1"
	write(cp+"/idVendor", "10c4\n")
	write(cp+"/idProduct", "ea60\n")
	write(cp+"/serial", "0001\n")
	write(cp+"/manufacturer", "Silicon Labs\n")
	write(cp+"/product", "CP2102 USB to UART Bridge Controller\n")
	mkdir(cp + "/1-1:1.0/ttyUSB0/tty/ttyUSB0")
	link(cp+"/1-1:1.0/ttyUSB0", cp+"/1-1:1.0/ttyUSB0/tty/ttyUSB0/device")
	link(cp+"/1-1:1.0/ttyUSB0/tty/ttyUSB0", "class/tty/ttyUSB0")
	// An ESP32-S3's own USB (ttyACM: the tty's device is the interface),
	// without a serial number attribute.
	acm := "devices/pci0000:00/usb1/1-2"
	write(acm+"/idVendor", "303a\n")
	write(acm+"/idProduct", "1001\n")
	write(acm+"/product", "USB JTAG/serial debug unit\n")
	mkdir(acm + "/1-2:1.0/tty/ttyACM0")
	link(acm+"/1-2:1.0", acm+"/1-2:1.0/tty/ttyACM0/device")
	link(acm+"/1-2:1.0/tty/ttyACM0", "class/tty/ttyACM0")
	// A built-in UART, and an 8250 placeholder without one.
	for name, typ := range map[string]string{"ttyS0": "4", "ttyS1": "0"} {
		d := "devices/platform/serial8250/tty/" + name
		write(d+"/type", typ+"\n")
		link("devices/platform/serial8250", d+"/device")
		link(d, "class/tty/"+name)
	}
	// A virtual terminal: no device.
	mkdir("devices/virtual/tty/tty0")
	link("devices/virtual/tty/tty0", "class/tty/tty0")

	got, err := listSysfsPorts(root, "/dev")
	if err != nil {
		t.Fatal(err)
	}
	want := []PortInfo{
		{Name: "/dev/ttyACM0", USB: true, VID: "303A", PID: "1001", Product: "USB JTAG/serial debug unit"},
		{Name: "/dev/ttyS0"},
		{Name: "/dev/ttyUSB0", USB: true, VID: "10C4", PID: "EA60", SerialNumber: "0001", Manufacturer: "Silicon Labs", Product: "CP2102 USB to UART Bridge Controller"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("listSysfsPorts:\n got %+v\nwant %+v", got, want)
	}
}

func TestListSysfsPortsNoSysfs(t *testing.T) {
	_, err := listSysfsPorts(filepath.Join(t.TempDir(), "none"), "/dev")
	if err == nil || !strings.Contains(err.Error(), "cannot list serial ports") {
		t.Fatalf("err = %v, want cannot list serial ports", err)
	}
}

// This machine's own ports: listed without error, each a /dev node that
// exists.
func TestListPortsHere(t *testing.T) {
	ports, err := ListPorts()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ports {
		if _, err := os.Stat(p.Name); err != nil {
			t.Errorf("listed %s: %v", p.Name, err)
		}
	}
}
