package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/ota/wire"
	"github.com/otactl/otactl/pkg/transport"
)

// NewCmdPush builds `otactl push`.
func NewCmdPush(f *Factory) *cobra.Command {
	o := &UpdateOptions{F: f}
	cmd := &cobra.Command{
		Use:   "push FW.ZIP [--chunk-size N] [--window N] [--commit] [--commit-timeout S]",
		Short: "Send a bundle over the RPC link itself (any --port, serial included), and wait for the outcome",
		Long: `Send a bundle through the RPC connection with OTA.Begin/Write/End, for devices
that cannot download a URL (serial links, closed networks). Each chunk is as
large as the device's 4096-byte frame limit allows unless --chunk-size says
otherwise; the first write may take long while the device erases flash.
Over a network several writes are in flight at once (--window). If the link
is lost (cable glitch, broker restart, dropped WebSocket), otactl reconnects
with backoff and goes on where the device is, as long as the device still
runs the update; if the device was reset meanwhile, nothing was applied
(exit 6). Then, like 'update', otactl waits for the device to reboot and
tells what booted (exit 6 if it came back on the old firmware).`,
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
			return runPush(cmd.Context(), o)
		},
	}
	addOutcomeFlags(cmd, o)
	cmd.Flags().IntVar(&o.ChunkSize, "chunk-size", 0, "bundle bytes per OTA.Write (0 = largest that keeps frames within the device's 4096-byte limit)")
	cmd.Flags().IntVar(&o.Window, "window", 0, fmt.Sprintf("%s calls in flight at once (0 = %d over WebSocket and MQTT, %d over HTTP, 1 over serial)", wire.OTAWrite, ota.DefaultWindow, ota.DefaultHTTPWindow))
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
	before, err := o.prepare(ctx, man)
	if err != nil {
		return err
	}

	bar := f.newProgressBar("pushing")
	var res ota.PushResult
	reconnect := min(f.rebootTimeout(), o.UpdateTimeout)
	err = func() error {
		// The dial (serial handshake, MQTT connect) is bounded by --timeout;
		// the transfer by the per-step timeouts inside Push, and regaining
		// a lost link by the reboot timeout (never longer than the device's
		// watchdog, after which the update is dead).
		dctx, dcancel := context.WithTimeout(ctx, f.G.Timeout)
		c, err := f.Connect(dctx)
		dcancel()
		if err != nil {
			return err
		}
		defer c.Close()
		// --timeout, when given, bounds each write (else 20 s). A call made
		// to regain a lost link gets at most ota.DefaultAttemptTimeout: a
		// request sent while the device is still away from its broker is
		// lost, and the next attempt should not wait long for its reply.
		var writeTimeout time.Duration
		if f.timeoutSet {
			writeTimeout = f.G.Timeout
		}
		attemptTimeout := min(f.G.Timeout, ota.DefaultAttemptTimeout)
		res, err = ota.New(c).Push(ctx, fh, st.Size(), ota.PushOptions{
			ChunkSize: o.ChunkSize, Window: f.window(o.Window),
			WriteTimeout:  writeTimeout,
			CommitTimeout: o.CommitTimeout.otaValue(), Timeout: o.UpdateTimeout,
			Redial: f.dialer(), ReconnectTimeout: reconnect, AttemptTimeout: attemptTimeout,
			Progress: bar.Bytes,
			OnEvent: func(ev ota.Event) {
				switch ev.Kind {
				case ota.EventWarning:
					f.note("%s", ev.Msg)
				case ota.EventRetry, ota.EventAbort, ota.EventResumed:
					bar.Done()
					f.progressNote("%s", ev.Msg)
				case ota.EventReconnecting:
					bar.Done()
					if ev.Attempt == 1 || f.G.Verbose {
						f.progressNote("%s (giving up after %s)", ev.Msg, humanDuration(reconnect))
					}
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
		return pushFailed(err, f.G.Timeout, o.UpdateTimeout)
	}
	tr := &transferInfo{Bytes: res.Size, ChunkSize: res.ChunkSize, Chunks: res.Chunks, Retries: res.Retries,
		Resumes: res.Resumes, Seconds: res.Elapsed.Seconds()}
	if res.Elapsed > 0 {
		tr.BytesPerS = float64(res.Size) / res.Elapsed.Seconds()
	}
	f.progressNote("sent %s in %d chunks of %d bytes in %s (%s/s)", humanBytes(res.Size), res.Chunks, res.ChunkSize,
		preciseDuration(res.Elapsed), humanBytes(int64(tr.BytesPerS)))
	return o.finish(ctx, before, res.Accepted, expect, tr)
}

// pushFailed gives the exit code and words of a failed push. A device that
// lost the update (reset, or the update ended while the link was down)
// did not apply it: exit 6, on every transport alike. A link that did not
// come back is exit 5, saying what the device does meanwhile.
//
// The --json document's "reason" of an *ota.UpdateLostError is its
// Reason() (ota.ReasonDeviceReset; ota.ReasonUpdateTimeout or another code
// of the device's message when its update ended; ota.ReasonBusy when it
// runs another update), with "result" not_applied.
func pushFailed(err error, timeout, updateTimeout time.Duration) error {
	var lost *ota.UpdateLostError
	if errors.As(err, &lost) {
		return &ExitError{Code: ExitUpdate, Err: err}
	}
	if errors.Is(err, ota.ErrLinkLost) {
		return &UnreachableError{Err: fmt.Errorf("%w; until then 'otactl status' shows the update in progress (its watchdog: --update-timeout %s); push again once the device is reachable", err, humanDuration(updateTimeout))}
	}
	return updateRejected(err, timeout)
}

// interruptedPush says in what state an interrupted push left the device.
func interruptedPush(err error, res ota.PushResult) string {
	var pe *ota.PushError
	switch {
	case errors.As(err, &pe) && pe.Aborted:
		return fmt.Sprintf("the transfer stopped at offset %d and was aborted (OTA.End); the boot state is unchanged, and a new push starts over", pe.Offset)
	case errors.As(err, &pe) && pe.Unreached:
		return fmt.Sprintf("the transfer stopped at offset %d while the link to the device was down, so it could not be aborted: the device's update watchdog ends the update (see 'otactl status'); the boot state is unchanged", pe.Offset)
	case errors.As(err, &pe):
		return fmt.Sprintf("the transfer stopped at offset %d; the device did not confirm the abort, so its update watchdog ends the update (see 'otactl status'); the boot state is unchanged", pe.Offset)
	case res.Chunks == 0:
		return "no data had been sent yet; the update was called off and the boot state is unchanged (see 'otactl status')"
	}
	return "all data was sent and the device was checking it (OTA.End): if the bundle is good, it reboots into it uncommitted, and falls back unless you run 'otactl commit': check with 'otactl bootstate'"
}
