package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/serial"
)

// ConsoleOptions are the inputs of `otactl console`.
type ConsoleOptions struct {
	F         *Factory
	Timestamp bool
}

// consoleReopenEvery is how often console tries to open a port that went
// away (a board whose USB port re-enumerates when it resets).
const consoleReopenEvery = 250 * time.Millisecond

// NewCmdConsole builds `otactl console`.
func NewCmdConsole(f *Factory) *cobra.Command {
	o := &ConsoleOptions{F: f}
	cmd := &cobra.Command{
		Use:   "console [--timestamp]",
		Short: "Print the device's log lines from its serial port, as 'mos console' does",
		Long: `Print the log lines the device writes on its serial port, one per line on
stdout, until Ctrl-C (exit 0). RPC frames on the link are not shown (with
--verbose, on stderr). Nothing is sent to the device: no handshake, so its
interactive console stays as it is.

A reset that keeps the port (a USB-UART adapter, the emulator's reboots)
shows as the device's boot lines. If the port goes away (the board's USB
port re-enumerates, the emulator exits), console says so on stderr and opens
it again as soon as it is back.

--json prints one JSON object a line: {"time": "…", "line": "…"}.
The port is held exclusively while console runs: stop it before running
another otactl command on the same port (or use --device-log on update and
push to keep the log lines of an update).`,
		Example: `  otactl --port /dev/ttyUSB0 console
  otactl --port auto console --timestamp
  otactl --port /dev/ttyUSB0 console --json > device.log.jsonl`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runConsole(cmd.Context(), o)
		},
	}
	cmd.Flags().BoolVar(&o.Timestamp, "timestamp", false, "start each line with the time it was received (15:04:05.000)")
	return cmd
}

func runConsole(ctx context.Context, o *ConsoleOptions) error {
	f := o.F
	u, err := transport.ParsePort(f.G.Port)
	if err != nil {
		return err
	}
	if u.Scheme != "serial" {
		return usageErrorf("console reads the device's log from a serial port, and --port %s is %s: over HTTP, WebSocket and MQTT a device sends no log on the RPC link; connect its serial port (--port /dev/ttyUSB0, or --port auto)", transport.RedactString(f.G.Port), u.Scheme)
	}
	name := serial.PortPath(u)
	opts := transport.Options{Logger: f.logger(), BaudRate: f.G.BaudRate, HWFlowControl: f.G.HWFlow}
	port, err := serial.Open(u, opts)
	if err != nil {
		if errors.Is(err, transport.ErrBadPort) {
			return err
		}
		return &UnreachableError{Err: fmt.Errorf("cannot open the device's console: %w", err)}
	}
	f.progressNote("reading the device log on %s (Ctrl-C to stop)", name)
	for {
		err := o.read(ctx, port)
		if ctx.Err() != nil {
			return nil
		}
		f.note("%s went away (%v): waiting for it to come back (Ctrl-C to stop)…", name, err)
		if port, err = o.reopen(ctx, u, opts); err != nil {
			return nil // interrupted while waiting
		}
		f.note("%s is back", name)
	}
}

// read prints the log lines of port until reading fails or ctx ends, and
// closes port.
func (o *ConsoleOptions) read(ctx context.Context, port io.ReadWriteCloser) error {
	f := o.F
	stop := context.AfterFunc(ctx, func() { port.Close() })
	defer stop()
	defer port.Close()
	var werr error
	dec := &serial.Decoder{
		OnJunk: func(line string) {
			if werr == nil {
				werr = o.printLine(line)
			}
		},
		OnFrame: func(frame []byte) {
			if f.G.Verbose {
				f.note("frame: %s", transport.RedactAuth(string(frame)))
			}
		},
	}
	buf := make([]byte, 4096)
	idle := 0
	for {
		n, err := port.Read(buf)
		if n > 0 {
			idle = 0
			dec.Feed(buf[:n])
			if werr != nil {
				return werr // stdout closed (a pipe into head): nothing left to do
			}
		}
		if err != nil {
			dec.Flush()
			return err
		}
		if n == 0 {
			// A port with a read timeout returns (0, nil): back off if it
			// repeats, so that it does not spin.
			idle++
			if idle > 10 {
				t := time.NewTimer(10 * time.Millisecond)
				select {
				case <-ctx.Done():
				case <-t.C:
				}
				t.Stop()
			}
		}
	}
}

// reopen opens the port again once it is back, trying every
// consoleReopenEvery until ctx ends.
func (o *ConsoleOptions) reopen(ctx context.Context, u *url.URL, opts transport.Options) (io.ReadWriteCloser, error) {
	tick := time.NewTicker(consoleReopenEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-tick.C:
		}
		if port, err := serial.Open(u, opts); err == nil {
			return port, nil
		}
	}
}

// printLine prints one device log line on stdout.
func (o *ConsoleOptions) printLine(line string) error {
	f := o.F
	now := time.Now()
	if f.G.JSON {
		b, err := json.Marshal(struct {
			Time string `json:"time"`
			Line string `json:"line"`
		}{now.Format(time.RFC3339Nano), line})
		if err != nil {
			return err
		}
		_, err = f.IO.Out.Write(append(b, '\n'))
		return err
	}
	var b strings.Builder
	if o.Timestamp {
		b.WriteString(now.Format("15:04:05.000 "))
	}
	b.WriteString(line)
	b.WriteString("\n")
	_, err := io.WriteString(f.IO.Out, b.String())
	return err
}
