package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/rpc"
)

// NewCmdBootState builds `otactl bootstate` and `otactl bootstate set`.
func NewCmdBootState(f *Factory) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bootstate",
		Short: "Show which slot runs, whether it is committed, and what boots next",
		Long: `Show the device's boot state (OTA.GetBootState) in words: which slot runs,
whether it is committed, and, for an uncommitted firmware, when the device
falls back to the previous one unless you commit. With --json, the device's
object as it sent it.`,
		Example: `  otactl --port /dev/ttyUSB0 bootstate
  otactl --port http://192.168.4.1/rpc bootstate --json | jq .is_committed`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runBootState(cmd.Context(), f)
		},
	}
	cmd.AddCommand(newCmdBootStateSet(f))
	return cmd
}

func runBootState(ctx context.Context, f *Factory) error {
	return f.withDevice(ctx, func(ctx context.Context, c *rpc.Client, d *ota.Device) error {
		bs, done, err := f.readBootState(ctx, c)
		if done || err != nil {
			return err
		}
		// Sys.GetInfo gives the running version and the uptime, which
		// tells how long an uncommitted firmware has left.
		var info *ota.SysInfo
		if i, err := d.GetInfo(ctx); err == nil {
			info = &i
		}
		f.describeBootState(f.IO.Out, bs, info)
		return nil
	})
}

// describeBootState writes the boot state as a sentence and a table.
func (f *Factory) describeBootState(w io.Writer, bs ota.BootState, info *ota.SysInfo) {
	p := f.outPalette()
	version := ""
	if info != nil && info.FWVersion != "" {
		version = fmt.Sprintf(" (%s %s)", info.App, info.FWVersion)
	}
	if bs.IsCommitted {
		fmt.Fprintf(w, "slot %d is running%s, %s; it boots again on every restart.\n", bs.ActiveSlot, version, p.green("committed"))
	} else {
		left := ""
		if info != nil && bs.CommitTimeout > 0 {
			remaining := time.Duration(bs.CommitTimeout)*time.Second - time.Duration(info.Uptime*float64(time.Second))
			left = " in " + humanDuration(remaining)
		}
		fmt.Fprintf(w, "slot %d is running%s, %s; the device falls back to slot %d%s unless you run `otactl commit` (any reboot before that also falls back).\n",
			bs.ActiveSlot, version, p.yellow("not yet committed"), bs.RevertSlot, left)
	}
	writeBootStateTable(w, bs)
}

func writeBootStateTable(w io.Writer, bs ota.BootState) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "active slot\t%d\nrevert slot\t%d\ncommitted\t%s\ncommit timeout\t%ds\n",
		bs.ActiveSlot, bs.RevertSlot, yesNo(bs.IsCommitted), bs.CommitTimeout)
	tw.Flush()
}

// readBootState calls OTA.GetBootState. With --json it prints the device's
// object as is and reports done.
func (f *Factory) readBootState(ctx context.Context, c *rpc.Client) (bs ota.BootState, done bool, err error) {
	raw, err := c.Call(ctx, "OTA.GetBootState", nil)
	if err != nil {
		return bs, false, err
	}
	if f.G.JSON {
		return bs, true, writeJSON(f.IO.Out, rawJSON(raw))
	}
	if err := json.Unmarshal(raw, &bs); err != nil {
		return bs, false, fmt.Errorf("OTA.GetBootState: unexpected result %.200s", raw)
	}
	return bs, false, nil
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

type bootStateSetOptions struct {
	active, revert int
	committed      bool
	timeout        commitTimeoutValue
}

func newCmdBootStateSet(f *Factory) *cobra.Command {
	o := &bootStateSetOptions{}
	cmd := &cobra.Command{
		Use:   "set [--active-slot N] [--revert-slot N] [--committed=BOOL] [--commit-timeout S]",
		Short: "Change what the device boots next (OTA.SetBootState)",
		Long: `Change the boot state the device uses at its next boot (OTA.SetBootState).
Nothing is flashed; only the given fields change. The device refuses a slot
that does not exist (exit 3). This is a low-level tool: an update, commit or
revert sets these for you.`,
		Example: `  # boot slot 0 next time, committed
  otactl bootstate set --active-slot 0 --committed=true
  # give the next uncommitted firmware 10 minutes
  otactl bootstate set --commit-timeout 600`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var ch ota.BootStateChange
			fl := cmd.Flags()
			if fl.Changed("active-slot") {
				ch.ActiveSlot = &o.active
			}
			if fl.Changed("revert-slot") {
				ch.RevertSlot = &o.revert
			}
			if fl.Changed("committed") {
				ch.IsCommitted = &o.committed
			}
			if fl.Changed("commit-timeout") {
				s := o.timeout.seconds()
				ch.CommitTimeout = &s
			}
			if ch.Empty() {
				return usageErrorf("bootstate set needs at least one of --active-slot, --revert-slot, --committed, --commit-timeout")
			}
			return runBootStateSet(cmd.Context(), f, ch)
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&o.active, "active-slot", 0, "slot to boot next")
	fl.IntVar(&o.revert, "revert-slot", 0, "slot to fall back to")
	fl.BoolVar(&o.committed, "committed", false, "whether the next boot is committed")
	fl.Var(&o.timeout, "commit-timeout", "seconds an uncommitted firmware waits for commit (or a duration: 5m)")
	return cmd
}

func runBootStateSet(ctx context.Context, f *Factory, ch ota.BootStateChange) error {
	return f.withDevice(ctx, func(ctx context.Context, c *rpc.Client, d *ota.Device) error {
		if err := d.SetBootState(ctx, ch); err != nil {
			var re *rpc.Error
			if errors.As(err, &re) && re.Code == -3 {
				return fmt.Errorf("%w (the device has no such slot; nothing changed: see 'otactl bootstate')", err)
			}
			return err
		}
		bs, done, err := f.readBootState(ctx, c)
		if done || err != nil {
			return err
		}
		f.out("boot state changed; it takes effect at the next boot. Now:")
		writeBootStateTable(f.IO.Out, bs)
		return nil
	})
}
