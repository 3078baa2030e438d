package cli

import (
	"context"
	"errors"
	"time"

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
