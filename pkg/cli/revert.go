package cli

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/rpc"
)

// NewCmdRevert builds `otactl revert`.
func NewCmdRevert(f *Factory) *cobra.Command {
	var noWait bool
	cmd := &cobra.Command{
		Use:   "revert [--no-wait]",
		Short: "Go back to the previous firmware now, instead of committing",
		Long: `Revert an uncommitted firmware (OTA.Revert): the device reboots into its
revert slot, committed. By default otactl waits until the device answers
again and shows what runs; --no-wait returns once the device accepted.
A committed firmware cannot be reverted (exit 3).`,
		Example: `  otactl --port http://192.168.4.1/rpc revert
  otactl revert --no-wait`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRevert(cmd.Context(), f, noWait)
		},
	}
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "return once the device accepted, without waiting for it to come back")
	return cmd
}

func runRevert(ctx context.Context, f *Factory, noWait bool) error {
	var before ota.Observation
	err := f.withDevice(ctx, func(ctx context.Context, c *rpc.Client, d *ota.Device) error {
		var err error
		if before, err = d.Observe(ctx); err != nil {
			return err
		}
		return d.Revert(ctx)
	})
	if err != nil {
		return err
	}
	if noWait {
		if f.G.JSON {
			return writeJSON(f.IO.Out, map[string]any{"reverting": true, "revert_slot": before.Boot.RevertSlot})
		}
		f.out("reverting: the device reboots into slot %d.", before.Boot.RevertSlot)
		return nil
	}
	f.progressNote("reverting: waiting for the device to reboot into slot %d…", before.Boot.RevertSlot)
	wctx, cancel := context.WithTimeout(ctx, f.rebootTimeout()+ota.VerdictMargin)
	defer cancel()
	// Not an update (Accepted stays false): the device points its boot
	// state at the revert slot as it replies, so WaitOutcome waits for real
	// evidence of the reboot (firmware, uptime, a moment off the air).
	out, c, err := ota.WaitOutcome(wctx, ota.WaitOptions{Dial: f.dialer(), Before: before, RebootTimeout: min(ota.RevertRebootTimeout, f.rebootTimeout())})
	if c != nil {
		c.Close()
	}
	if out == nil {
		return deviceErr(err, f.rebootTimeout())
	}
	if out.Result == ota.NotApplied {
		// Same firmware in both slots, booted moments ago, back faster
		// than a poll: nothing tells the reboot apart.
		f.progressNote("could not see the device reboot within %s; this is what it reports now:", min(ota.RevertRebootTimeout, f.rebootTimeout()))
	}
	if f.G.JSON {
		return writeJSON(f.IO.Out, map[string]any{"reverted": out.After.ActiveSlot == before.Boot.RevertSlot,
			"boot_state": bootFieldsOf(&out.After), "info": rawJSON(out.Info.Raw)})
	}
	f.out("reverted: slot %d runs %s %s, committed=%s.", out.After.ActiveSlot, out.Info.App, out.Info.FWVersion, yesNo(out.After.IsCommitted))
	return nil
}
