package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

// CallOptions are the inputs of `otactl call`.
type CallOptions struct {
	F      *Factory
	Method string
	Args   json.RawMessage // nil when none
}

// NewCmdCall builds `otactl call METHOD [JSON-ARGS]`. runF replaces runCall
// in tests of flag parsing.
func NewCmdCall(f *Factory, runF func(context.Context, *CallOptions) error) *cobra.Command {
	opts := &CallOptions{F: f}
	cmd := &cobra.Command{
		Use:   "call METHOD [JSON-ARGS]",
		Short: "Call any RPC method and print its result as JSON",
		Long: `Call an RPC method on the device and print the result as 2-space indented JSON
on stdout. An error reply is printed on stderr and exits with code 3.`,
		Example: `  otactl --port /dev/ttyUSB0 call Sys.GetInfo
  otactl --port http://192.168.4.1/rpc call OTA.SetBootState '{"commit_timeout": 300}'
  otactl --port mqtt://broker.local/esp32_0A1B2C call OTA.GetBootState`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 1 || len(args) > 2 {
				return usageErrorf("call takes METHOD and optional JSON-ARGS, got %d arguments", len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Method = args[0]
			if len(args) == 2 && strings.TrimSpace(args[1]) != "" {
				raw := json.RawMessage(strings.TrimSpace(args[1]))
				if !json.Valid(raw) {
					return usageErrorf("JSON-ARGS is not valid JSON: %s (quote it for the shell, e.g. '{\"commit_timeout\": 300}')", truncate(args[1], 60))
				}
				opts.Args = raw
			}
			if runF != nil {
				return runF(cmd.Context(), opts)
			}
			return runCall(cmd.Context(), opts)
		},
	}
	return cmd
}

func runCall(ctx context.Context, opts *CallOptions) error {
	f := opts.F
	ctx, cancel := context.WithTimeout(ctx, f.G.Timeout)
	defer cancel()
	client, err := f.Connect(ctx)
	if err != nil {
		return err
	}
	defer client.Close()
	var params any
	if opts.Args != nil {
		params = opts.Args
	}
	res, err := client.Call(ctx, opts.Method, params)
	if err != nil {
		return deviceErr(err, f.G.Timeout)
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, res, "", "  "); err != nil {
		return fmt.Errorf("device sent a result that is not JSON: %w", err)
	}
	buf.WriteByte('\n')
	_, err = f.IO.Out.Write(buf.Bytes())
	return err
}

// deviceErr turns a deadline into an unreachable error that says what to do.
func deviceErr(err error, timeout fmt.Stringer) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return &UnreachableError{Err: fmt.Errorf("%w: no answer within %v: check --port and that the device is on, or raise --timeout", err, timeout)}
	}
	return err
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
