package cli

import (
	"context"
	"errors"
	"time"

	"github.com/spf13/cobra"

	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/rpc"
)

// NewCmdCommit builds `otactl commit`.
func NewCmdCommit(f *Factory) *cobra.Command {
	var health string
	grace := ota.DefaultHealthGrace
	cmd := &cobra.Command{
		Use:   "commit",
		Short: "Keep the firmware that runs uncommitted after an update",
		Long: `Commit the running firmware (OTA.Commit): after an update the new firmware
runs uncommitted and the device falls back to the previous one when its
commit timeout passes or at any reboot. Commit makes it permanent, then
checks the boot state to confirm. With --health-method, that method must
answer without error first — it is retried for --health-grace (default 30s)
— or nothing is committed (exit 6; the firmware then falls back at its
commit timeout, or run 'otactl revert').

A firmware that is committed already is not an error: otactl says
"already committed" (--json: "already_committed": true) and exits 0, so
scripts can run commit whenever they want the running firmware kept.`,
		Example: `  otactl --port /dev/ttyUSB0 commit
  otactl commit --health-method App.Health`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			timeout := f.G.Timeout
			if health != "" {
				if grace < time.Second {
					return usageErrorf("--health-grace must be at least 1s")
				}
				timeout += grace + min(f.G.Timeout, 5*time.Second) // the health check's tries, then the commit
			}
			return f.withDeviceTimeout(cmd.Context(), timeout, func(ctx context.Context, c *rpc.Client, d *ota.Device) error {
				bs, err := d.CommitAfterHealthCheck(ctx, ota.HealthOptions{Method: health, Grace: grace, CallTimeout: min(f.G.Timeout, 5*time.Second)})
				if errors.Is(err, ota.ErrNothingToCommit) {
					return f.alreadyCommitted(ctx, d, bs)
				}
				if err != nil {
					return err
				}
				if f.G.JSON {
					return writeJSON(f.IO.Out, map[string]any{"committed": true, "already_committed": false, "boot_state": bootFieldsOf(&bs)})
				}
				f.out("%s: slot %d boots from now on.", f.outPalette().green("committed"), bs.ActiveSlot)
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&health, "health-method", "", "RPC method that must answer without error before committing")
	cmd.Flags().Var(secondsFlag{d: &grace, max: ota.MaxTimeout, rangeText: "must be from 1s to 2147483s"}, "health-grace", "how long --health-method may fail or stay silent (retried) before the firmware counts as unhealthy")
	return cmd
}
