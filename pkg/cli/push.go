package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/ota/wire"
	"github.com/otactl/otactl/pkg/transport"
)

// NewCmdPush builds `otactl push`.
func NewCmdPush(f *Factory) *cobra.Command {
	o := &UpdateOptions{F: f}
	cmd := &cobra.Command{
		Use:     "push FW.ZIP [--chunk-size N] [--window N] [--commit] [--commit-timeout S]",
		Aliases: []string{"ota"},
		Short:   "Send a bundle over the RPC link itself (any --port, serial included), and wait for the outcome",
		Long: `Send a bundle through the RPC connection with OTA.Begin/Write/End, for devices
that cannot download a URL (serial links, closed networks). Each chunk is as
large as the device's 4096-byte frame limit allows unless --chunk-size says
otherwise; the first write may take long while the device erases flash.
Over a network several writes are in flight at once (--window). If the link
is lost (cable glitch, broker restart, dropped WebSocket), otactl reconnects
with backoff and goes on where the device is, as long as the device still
runs the update; if the device was reset meanwhile, nothing was applied
(exit 6). Then, like 'update', otactl waits for the device to reboot and
tells what booted (exit 6 if it came back on the old firmware).
'otactl ota FW.ZIP' is the same command, as 'mos ota' pushes over the link.`,
		Example: `  otactl --port /dev/ttyUSB0 push fw.zip --commit
  otactl --port ws://192.168.4.1/rpc push fw.zip --commit-timeout 600
  otactl --port mqtt://broker/esp32_0A1B2C push fw.zip --window 32
  otactl --port /dev/ttyUSB0 push fw.zip --chunk-size 512 --no-wait`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageErrorf("push takes one bundle file, got %d arguments", len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			o.File = args[0]
			if err := o.check(); err != nil {
				return err
			}
			if o.ChunkSize < 0 {
				return usageErrorf("--chunk-size must be positive (0 = largest that fits)")
			}
			if err := f.checkWindow(o.Window); err != nil {
				return err
			}
			f.updateDoc().Delivery = deliveryPush
			return runPush(cmd.Context(), o)
		},
	}
	addOutcomeFlags(cmd, o)
	cmd.Flags().IntVar(&o.ChunkSize, "chunk-size", 0, "bundle bytes per OTA.Write (0 = largest that keeps frames within the device's 4096-byte limit)")
	cmd.Flags().IntVar(&o.Window, "window", 0, fmt.Sprintf("%s calls in flight at once (0 = %d over WebSocket and MQTT, %d over HTTP, 1 over serial)", wire.OTAWrite, ota.DefaultWindow, ota.DefaultHTTPWindow))
	addDeviceLogFlag(f, cmd)
	return cmd
}

// checkWindow refuses a --window that is negative, too large, or more
// than 1 on a serial port.
func (f *Factory) checkWindow(w int) error {
	switch {
	case w < 0:
		return usageErrorf("--window must be positive (0 = the default for the link)")
	case w > ota.MaxWindow:
		return usageErrorf("--window %d: at most %d writes can be in flight", w, ota.MaxWindow)
	case w > 1 && f.scheme() == "serial":
		return usageErrorf("--window %d: a serial link sends one write at a time (the line is the bottleneck, and the device's UART buffer holds one frame); drop --window", w)
	}
	return nil
}

// scheme is the transport scheme of --port ("serial", "http", "ws", "mqtt"
// and the TLS forms), or "" when it does not parse.
func (f *Factory) scheme() string {
	u, err := transport.ParsePort(f.G.Port)
	if err != nil {
		return ""
	}
	return u.Scheme
}

// window is the number of writes in flight for this link: --window, or the
// link's default.
func (f *Factory) window(flag int) int {
	if flag > 0 {
		return flag
	}
	switch f.scheme() {
	case "ws", "wss", "mqtt", "mqtts":
		return ota.DefaultWindow
	case "http", "https":
		return ota.DefaultHTTPWindow
	}
	return 1
}

func runPush(ctx context.Context, o *UpdateOptions) error { return o.run(ctx, true) }
