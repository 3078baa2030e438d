package cli

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/ota/wire"
	"github.com/otactl/otactl/pkg/rpc"
)

// NewCmdStatus builds `otactl status`.
func NewCmdStatus(f *Factory) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show whether an update is running on the device (OTA.Status)",
		Example: `  otactl --port http://192.168.4.1/rpc status
  otactl status --json | jq .progress_percent`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return f.withDevice(cmd.Context(), func(ctx context.Context, c *rpc.Client, d *ota.Device) error {
				st, err := d.Status(ctx)
				if err != nil {
					return err
				}
				if f.G.JSON {
					return writeJSON(f.IO.Out, rawJSON(st.Raw))
				}
				switch st.State {
				case ota.StateIdle:
					f.out("no update running")
				case ota.StateProgress:
					f.out("update in progress: %d%%", st.ProgressPercent)
				case ota.StateError:
					f.out("the last update failed: %s", st.Msg)
				case ota.StateSuccess:
					f.out("an update finished; the device is about to reboot into it")
				default:
					f.out("update state %d: %s", int(st.State), st.Msg)
				}
				// The device's message, unless it only names the state
				// ("idle", "progress").
				if st.Msg != "" && st.State != ota.StateError && !wire.IsStateWord(st.Msg) {
					f.out("device says: %s", st.Msg)
				}
				return nil
			})
		},
	}
}
