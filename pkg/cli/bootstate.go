package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/rpc"
)

// NewCmdBootState builds `otactl bootstate` and `otactl bootstate set`.
func NewCmdBootState(f *Factory) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bootstate",
		Short: "Show what runs now, whether it is committed, and what boots next",
		Long: `Show what runs now (Sys.GetInfo) and what boots next (OTA.GetBootState:
active_slot is the slot the NEXT boot starts), whether it is committed, and,
for a firmware on trial, when the device falls back unless you commit.
With --json: the device's active_slot, revert_slot, is_committed and
commit_timeout, plus "running" (slot, app, version, build_id), "next_boot"
(slot, committed, same_firmware) and, on trial, "falls_back_to" and
"commit_timeout_left_seconds".`,
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
		bs, info, err := readBoot(ctx, d)
		if err != nil {
			return err
		}
		if f.G.JSON {
			return writeJSON(f.IO.Out, bootStateDoc(bs, info))
		}
		f.describeBootState(f.IO.Out, bs, info)
		return nil
	})
}

// readBoot reads the boot state and Sys.GetInfo (the running firmware and
// its uptime). A device without Sys.GetInfo (an RPC error) leaves info nil;
// a reply that lacks what is needed is an error.
func readBoot(ctx context.Context, d *ota.Device) (ota.BootState, *ota.SysInfo, error) {
	i, err := d.GetInfo(ctx)
	var info *ota.SysInfo
	var re *rpc.Error
	switch {
	case err == nil:
		info = &i
	case errors.As(err, &re) && re.Code != 401:
	default:
		return ota.BootState{}, nil, err
	}
	bs, err := d.GetBootState(ctx)
	return bs, info, err
}

// bootRunning is the running firmware in `bootstate --json`.
type bootRunning struct {
	// Slot is null when the device does not say which slot it runs.
	Slot    *int   `json:"slot"`
	App     string `json:"app,omitempty"`
	Version string `json:"version,omitempty"`
	BuildID string `json:"build_id,omitempty"`
}

// bootNext is what the next boot does in `bootstate --json`.
type bootNext struct {
	Slot      int  `json:"slot"`
	Committed bool `json:"committed"`
	// SameFirmware: the next boot starts the firmware that runs now.
	SameFirmware bool `json:"same_firmware"`
}

// bootDoc is `bootstate --json`: the device's four fields, then what runs
// and what boots next.
type bootDoc struct {
	bootFields
	Running *bootRunning `json:"running,omitempty"`
	Next    bootNext     `json:"next_boot"`
	// FallbackSlot and FallbackIn: for a running firmware on trial.
	FallbackSlot *int     `json:"falls_back_to,omitempty"`
	FallbackIn   *float64 `json:"commit_timeout_left_seconds,omitempty"`
}

func bootStateDoc(bs ota.BootState, info *ota.SysInfo) bootDoc {
	v := ota.ViewBoot(bs, info)
	doc := bootDoc{bootFields: *bootFieldsOf(&bs), Next: bootNext{Slot: v.Next, Committed: v.NextCommitted, SameFirmware: v.NextIsRunning && v.RunningSlot != nil}}
	if info != nil {
		doc.Running = &bootRunning{Slot: v.RunningSlot, App: info.App, Version: info.FWVersion, BuildID: info.FWID}
	}
	if v.OnTrial {
		fb := v.Fallback
		doc.FallbackSlot = &fb
		if v.FallbackIn != nil {
			s := math.Round(v.FallbackIn.Seconds()*10) / 10
			doc.FallbackIn = &s
		}
	}
	return doc
}

// describeBootState writes what runs now and what boots next, in words,
// then the boot state as a table.
func (f *Factory) describeBootState(w io.Writer, bs ota.BootState, info *ota.SysInfo) {
	p := f.outPalette()
	v := ota.ViewBoot(bs, info)
	name := "firmware not reported (no Sys.GetInfo)"
	if info != nil {
		name = strings.TrimSpace(info.App + " " + v.Running.String())
	}
	switch {
	case v.RunningSlot != nil:
		fmt.Fprintf(w, "running:    slot %d, %s", *v.RunningSlot, name)
	default:
		fmt.Fprintf(w, "running:    %s (the device does not say from which slot: slot %d, unless its boot state was changed since it booted)", name, bs.ActiveSlot)
	}
	switch {
	case v.OnTrial:
		fmt.Fprintf(w, ", %s\n", p.yellow("not yet committed"))
	case v.NextIsRunning && bs.IsCommitted:
		fmt.Fprintf(w, ", %s\n", p.green("committed"))
	default:
		fmt.Fprintln(w)
	}
	switch {
	case v.OnTrial:
		left := ""
		if v.FallbackIn != nil {
			left = " in " + humanDuration(*v.FallbackIn)
		}
		fmt.Fprintf(w, "next boot:  slot %d (the fallback)%s unless you run `otactl commit`: any reboot before that also falls back\n", v.Fallback, left)
	case v.NextIsRunning:
		fmt.Fprintf(w, "next boot:  slot %d again, committed: it boots on every restart\n", v.Next)
	case v.NextCommitted:
		fmt.Fprintf(w, "next boot:  %s, committed (the boot state was changed since this firmware booted; it takes effect at the next reboot)\n", p.bold(fmt.Sprintf("slot %d", v.Next)))
	default:
		fmt.Fprintf(w, "next boot:  %s on trial, uncommitted: it falls back to slot %d unless committed within %ds of that boot (the boot state was changed since this firmware booted)\n", p.bold(fmt.Sprintf("slot %d", v.Next)), v.Fallback, bs.CommitTimeout)
	}
	writeBootStateTable(w, bs)
}

func writeBootStateTable(w io.Writer, bs ota.BootState) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "active slot\t%d\nrevert slot\t%d\ncommitted\t%s\ncommit timeout\t%ds\n",
		bs.ActiveSlot, bs.RevertSlot, yesNo(bs.IsCommitted), bs.CommitTimeout)
	tw.Flush()
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
		bs, info, err := readBoot(ctx, d)
		if err != nil {
			return err
		}
		if f.G.JSON {
			return writeJSON(f.IO.Out, bootStateDoc(bs, info))
		}
		f.out("boot state changed; it takes effect at the next boot. Now:")
		f.describeBootState(f.IO.Out, bs, info)
		return nil
	})
}
