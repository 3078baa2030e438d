package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/otactl/otactl/pkg/transport/serial"
)

// AutoPort is the --port value (also OTACTL_PORT, MOS_PORT) that picks the
// one USB serial port of this machine.
const AutoPort = "auto"

// listPorts lists this machine's serial ports (Factory.ListPorts, by
// default serial.ListPorts).
func (f *Factory) listPorts() ([]serial.PortInfo, error) {
	if f.ListPorts != nil {
		return f.ListPorts()
	}
	return serial.ListPorts()
}

// resolveAutoPort replaces --port auto by the single USB serial port of
// this machine. None, or more than one, is a usage error (exit 2) that
// says what to do (docs/transports.md, "--port auto").
func (f *Factory) resolveAutoPort(cmd *cobra.Command) error {
	if !strings.EqualFold(f.G.Port, AutoPort) {
		return nil
	}
	// Only for the commands that talk to the device at --port: not the
	// offline ones (bundle, emulator, ports …), nor fleet (its devices come
	// from its own flags).
	if isOffline(cmd) || hasAnnotation(cmd, annotOwnDevices) || !cmd.HasParent() {
		return nil
	}
	ports, err := f.listPorts()
	if err != nil {
		return usageErrorf("--port auto: %v: name the port with --port", err)
	}
	var usb, other []serial.PortInfo
	for _, p := range ports {
		if p.USB {
			usb = append(usb, p)
		} else {
			other = append(other, p)
		}
	}
	switch len(usb) {
	case 1:
		f.G.Port = usb[0].Name
		f.progressNote("--port auto: using %s", describePort(usb[0]))
		return nil
	case 0:
		msg := "--port auto: no USB serial port found: plug the device in (with a cable that carries data, not only power), check that its USB-serial driver is installed, or name the port with --port"
		if len(other) > 0 {
			names := make([]string, len(other))
			for i, p := range other {
				names[i] = p.Name
			}
			msg += fmt.Sprintf(" (other serial ports: %s)", strings.Join(names, ", "))
		}
		return usageErrorf("%s", msg)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "--port auto: %d USB serial ports found, name the device's with --port (or OTACTL_PORT):", len(usb))
	for _, p := range usb {
		b.WriteString("\n  ")
		b.WriteString(describePort(p))
	}
	return usageErrorf("%s", b.String())
}

// describePort is one line about a port: /dev/ttyUSB0 (USB 10C4:EA60,
// serial 0001, Silicon Labs CP2102 USB to UART Bridge Controller).
func describePort(p serial.PortInfo) string {
	if !p.USB {
		return p.Name
	}
	var parts []string
	if id := usbID(p); id != "" {
		parts = append(parts, "USB "+id)
	} else {
		parts = append(parts, "USB")
	}
	if p.SerialNumber != "" {
		parts = append(parts, "serial "+p.SerialNumber)
	}
	if d := portDescription(p); d != "" {
		parts = append(parts, d)
	}
	return p.Name + " (" + strings.Join(parts, ", ") + ")"
}

func usbID(p serial.PortInfo) string {
	if p.VID == "" && p.PID == "" {
		return ""
	}
	return p.VID + ":" + p.PID
}

// portDescription is the manufacturer and product strings, the product's
// alone when it already names the maker.
func portDescription(p serial.PortInfo) string {
	switch {
	case p.Manufacturer == "" || strings.HasPrefix(p.Product, p.Manufacturer):
		return p.Product
	case p.Product == "":
		return p.Manufacturer
	}
	return p.Manufacturer + " " + p.Product
}

// NewCmdPorts builds `otactl ports`.
func NewCmdPorts(f *Factory) *cobra.Command {
	return &cobra.Command{
		Use:   "ports",
		Short: "List this machine's serial ports, with USB vendor, product and serial number",
		Long: `List the serial ports of this machine, as 'mos ports' does, with the USB
vendor and product ids (VID:PID), serial number and product name of USB
serial adapters and boards. Nothing is opened: listing never resets a board.

--port auto (or OTACTL_PORT=auto, MOS_PORT=auto) picks the only USB serial
port listed here; with none or several it lists them and exits 2.`,
		Example: `  otactl ports
  otactl ports --json | jq -r '.ports[] | select(.usb) | .name'
  otactl --port auto call Sys.GetInfo`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runPorts(f)
		},
	}
}

func runPorts(f *Factory) error {
	ports, err := f.listPorts()
	if err != nil {
		return err
	}
	if f.G.JSON {
		if ports == nil {
			ports = []serial.PortInfo{}
		}
		return writeJSON(f.IO.Out, map[string]any{"ports": ports})
	}
	if len(ports) == 0 {
		f.note("no serial ports found: is the device plugged in (with a cable that carries data), and its USB-serial driver installed?")
		return nil
	}
	tw := tabwriter.NewWriter(f.IO.Out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PORT\tUSB ID\tSERIAL\tDESCRIPTION")
	dash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	for _, p := range ports {
		if !p.USB {
			fmt.Fprintf(tw, "%s\t-\t-\t-\n", p.Name)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Name, dash(usbID(p)), dash(p.SerialNumber), dash(portDescription(p)))
	}
	return tw.Flush()
}
