package cli

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/rpc"
)

// NewCmdSnapshot builds `otactl snapshot`.
func NewCmdSnapshot(f *Factory) *cobra.Command {
	var setAsRevert bool
	var timeout commitTimeoutValue
	cmd := &cobra.Command{
		Use:   "snapshot [--set-as-revert] [--commit-timeout S]",
		Short: "Copy the running firmware to the spare slot (OTA.CreateSnapshot)",
		Long: `Copy the running, committed firmware (app and filesystem) to the spare slot.
With --set-as-revert, the running firmware becomes uncommitted with the
snapshot as its fallback: make a risky change (config, files), check it,
then 'otactl commit'; if the change bricks the device, it falls back to the
snapshot when the commit timeout passes.`,
		Example: `  otactl snapshot
  otactl snapshot --set-as-revert --commit-timeout 600`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ct := -1
			if cmd.Flags().Changed("commit-timeout") {
				ct = timeout.seconds()
			}
			return f.withDevice(cmd.Context(), func(ctx context.Context, c *rpc.Client, d *ota.Device) error {
				slot, err := d.CreateSnapshot(ctx, setAsRevert, ct)
				if err != nil {
					return err
				}
				if f.G.JSON {
					return writeJSON(f.IO.Out, map[string]any{"slot": slot, "set_as_revert": setAsRevert})
				}
				f.out("snapshot written to slot %d.", slot)
				if setAsRevert {
					f.out("the running firmware is now uncommitted with slot %d as its fallback: run `otactl commit` once your change is good.", slot)
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&setAsRevert, "set-as-revert", false, "make the snapshot the fallback of the running (then uncommitted) firmware")
	cmd.Flags().Var(&timeout, "commit-timeout", "with --set-as-revert: seconds before falling back to the snapshot")
	return cmd
}
