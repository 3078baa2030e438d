package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/mqtt"
)

// NewCmdPush builds `otactl push`.
func NewCmdPush(f *Factory) *cobra.Command {
	o := &UpdateOptions{F: f}
	cmd := &cobra.Command{
		Use:   "push FW.ZIP [--chunk-size N] [--commit] [--commit-timeout S]",
		Short: "Send a bundle over the RPC link itself (any --port, serial included), and wait for the outcome",
		Long: `Send a bundle through the RPC connection with OTA.Begin/Write/End, for devices
that cannot download a URL (serial links, closed networks). Each chunk is as
large as the device's 4096-byte frame limit allows unless --chunk-size says
otherwise; a failed chunk is retried; the first write may take long while the
device erases flash. Then, like 'update', otactl waits for the device to
reboot and tells what booted (exit 6 if it came back on the old firmware).`,
		Example: `  otactl --port /dev/ttyUSB0 push fw.zip --commit
  otactl --port ws://192.168.4.1/rpc push fw.zip --commit-timeout 600
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
			return runPush(cmd.Context(), o)
		},
	}
	addOutcomeFlags(cmd, o)
	cmd.Flags().IntVar(&o.ChunkSize, "chunk-size", 0, "bundle bytes per OTA.Write (0 = largest that keeps frames within the device's 4096-byte limit)")
	return cmd
}

// envelope describes the frames this connection sends, so that push chunks
// are as large as the device's frame limit allows.
func (f *Factory) envelope() ota.Envelope {
	env := ota.Envelope{Src: rpc.DefaultSrc, Auth: f.G.RPCCreds != ""}
	if u, err := transport.ParsePort(f.G.Port); err == nil && (u.Scheme == "mqtt" || u.Scheme == "mqtts") {
		dev := mqtt.DeviceID(u)
		// A random client id is 23 characters (otactl-<16 hex>).
		env.Src = mqtt.ReplySrc(dev, strings.Repeat("c", 23))
		env.Dst = dev
	}
	return env
}

// frameLimit is the largest frame JSON the device takes on this link. A
// device's UART receive buffer (rpc.max_frame_size + 6) also holds the
// 8-digit CRC and part of the closing delimiter, so serial frames keep a
// margin below 4096.
func (f *Factory) frameLimit() int {
	if u, err := transport.ParsePort(f.G.Port); err == nil && u.Scheme == "serial" {
		return frame.MaxSize - 16
	}
	return frame.MaxSize
}

func runPush(ctx context.Context, o *UpdateOptions) error {
	f := o.F
	rep, err := localBundle(o.File)
	if err != nil {
		return err
	}
	if err := o.Sig.checkSignatures(o.File, rep); err != nil {
		return err
	}
	man := rep.Manifest
	expect := ota.Firmware{Version: man.Version, BuildID: man.BuildID}
	fh, err := os.Open(o.File)
	if err != nil {
		return err
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return err
	}
	env := f.envelope()
	limit := f.frameLimit()
	if max := ota.MaxChunkSize(limit, st.Size(), env); o.ChunkSize > max {
		f.note("warning: --chunk-size %d makes frames larger than the device's 4096-byte limit (largest that fits: %d); a real device drops them", o.ChunkSize, max)
	}
	before, err := o.prepare(ctx, man)
	if err != nil {
		return err
	}

	bar := f.newProgressBar("pushing")
	var res ota.PushResult
	err = func() error {
		// Each step has its own timeout inside Push; this bounds the whole
		// transfer only by the device's watchdog per step.
		// The dial (serial handshake, MQTT connect) is bounded by --timeout;
		// the transfer by the per-step timeouts inside Push.
		dctx, dcancel := context.WithTimeout(ctx, f.G.Timeout)
		c, err := f.Connect(dctx)
		dcancel()
		if err != nil {
			return err
		}
		defer c.Close()
		res, err = ota.New(c).Push(ctx, fh, st.Size(), ota.PushOptions{
			ChunkSize: o.ChunkSize, Envelope: &env, FrameLimit: limit,
			CommitTimeout: o.CommitTimeout.otaValue(), Timeout: o.UpdateTimeout,
			Progress: bar.Bytes,
			OnEvent: func(ev ota.Event) {
				switch ev.Kind {
				case ota.EventRetry, ota.EventAbort:
					bar.Done()
					f.progressNote("%s", ev.Msg)
				case ota.EventBegin:
					if f.G.Verbose {
						f.note("%s", ev.Msg)
					}
				}
			},
		})
		return err
	}()
	bar.Done()
	if err != nil {
		if ctx.Err() != nil {
			return &InterruptedError{Err: err, Msg: interruptedPush(err, res)}
		}
		return updateRejected(err, f.G.Timeout)
	}
	tr := &transferInfo{Bytes: res.Size, ChunkSize: res.ChunkSize, Chunks: res.Chunks, Retries: res.Retries,
		Seconds: res.Elapsed.Seconds()}
	if res.Elapsed > 0 {
		tr.BytesPerS = float64(res.Size) / res.Elapsed.Seconds()
	}
	f.progressNote("sent %s in %d chunks of %d bytes in %s (%s/s)", humanBytes(res.Size), res.Chunks, res.ChunkSize,
		preciseDuration(res.Elapsed), humanBytes(int64(tr.BytesPerS)))
	return o.finish(ctx, before, res.Accepted, expect, tr)
}

// interruptedPush says in what state an interrupted push left the device.
func interruptedPush(err error, res ota.PushResult) string {
	var pe *ota.PushError
	switch {
	case errors.As(err, &pe) && pe.Aborted:
		return fmt.Sprintf("the transfer stopped at offset %d and was aborted (OTA.End); the boot state is unchanged, and a new push starts over", pe.Offset)
	case errors.As(err, &pe):
		return fmt.Sprintf("the transfer stopped at offset %d; the device did not confirm the abort, so its update watchdog ends the update (see 'otactl status'); the boot state is unchanged", pe.Offset)
	case res.Chunks == 0:
		return "no data had been sent yet; the update was called off and the boot state is unchanged (see 'otactl status')"
	}
	return "all data was sent and the device was checking it (OTA.End): if the bundle is good, it reboots into it uncommitted, and falls back unless you run 'otactl commit': check with 'otactl bootstate'"
}
