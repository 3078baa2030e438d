package cli

import (
	"context"
	"fmt"
	"io"
	"sort"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/otactl/otactl/pkg/fleet"
	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/rpc"
)

type fleetBootStateOptions struct {
	dev      fleetDevices
	parallel int
}

func newCmdFleetBootState(f *Factory) *cobra.Command {
	o := &fleetBootStateOptions{}
	cmd := &cobra.Command{
		Use:   "bootstate (--devices FILE | --device PORT ... | --broker URL --ids FILE)",
		Short: "Show what every device runs, whether it is committed, and totals per version",
		Long: `Read Sys.GetInfo and OTA.GetBootState of every device (--parallel at a time)
and print one row per device: the running version, its slot, whether it is
committed, the time left before an uncommitted firmware falls back, or why the
device could not be read; then the totals per version. --json: one document
with every device's 'otactl bootstate --json' and the totals.
Exit 0 when every device answered; otherwise the exit code the devices that
did not answer share (5: unreachable), or 1 when they differ.`,
		Example: `  otactl fleet bootstate --devices devices.txt
  otactl fleet bootstate --broker mqtt://broker:1883 --ids ids.txt --json | jq .totals`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runFleetBootState(cmd, f, o)
		},
	}
	o.dev.add(cmd.Flags())
	cmd.Flags().IntVar(&o.parallel, "parallel", 50, "devices read at once")
	return cmd
}

// fleetBootRow is one device of `fleet bootstate`.
type fleetBootRow struct {
	Device  string `json:"device"`
	Address string `json:"address"`
	// Answered is false when the device could not be read: Error says
	// why, Reason and ExitCode as `otactl bootstate` would.
	Answered bool       `json:"answered"`
	Error    string     `json:"error,omitempty"`
	Reason   ota.Reason `json:"reason"`
	ExitCode int        `json:"exit_code"`
	// Version, BuildID: the running firmware; Committed: it is committed
	// (not on trial).
	Version   string   `json:"version,omitempty"`
	BuildID   string   `json:"build_id,omitempty"`
	Committed *bool    `json:"committed,omitempty"`
	BootState *bootDoc `json:"bootstate,omitempty"`
}

type fleetVersionTotal struct {
	Version     string `json:"version"`
	BuildID     string `json:"build_id"`
	Devices     int    `json:"devices"`
	Committed   int    `json:"committed"`
	Uncommitted int    `json:"uncommitted"`
}

type fleetBootDoc struct {
	Totals struct {
		Devices    int                 `json:"devices"`
		Answered   int                 `json:"answered"`
		Unanswered int                 `json:"unanswered"`
		Versions   []fleetVersionTotal `json:"versions"`
	} `json:"totals"`
	ExitCode int            `json:"exit_code"`
	Devices  []fleetBootRow `json:"devices"`
}

func runFleetBootState(cmd *cobra.Command, f *Factory, o *fleetBootStateOptions) error {
	ctx := cmd.Context()
	if o.parallel < 1 {
		return usageErrorf("--parallel must be at least 1")
	}
	targets, err := o.dev.targets(f, cmd)
	if err != nil {
		return err
	}
	if _, err := f.transportOptions(); err != nil {
		return err
	}
	rows := make([]fleetBootRow, len(targets))
	sem := make(chan struct{}, o.parallel)
	var wg sync.WaitGroup
	for i, t := range targets {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			rows[i] = fleetBootRow{Device: t.Name, Address: t.Address, Error: "interrupted", Reason: ota.ReasonInterrupted, ExitCode: ExitFailure}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			rows[i] = readFleetBoot(ctx, f, t)
		}()
	}
	wg.Wait()

	doc := &fleetBootDoc{Devices: rows}
	byVersion := map[[2]string]*fleetVersionTotal{}
	codes := map[int]bool{}
	for _, r := range rows {
		doc.Totals.Devices++
		if !r.Answered {
			doc.Totals.Unanswered++
			codes[r.ExitCode] = true
			continue
		}
		doc.Totals.Answered++
		k := [2]string{r.Version, r.BuildID}
		vt := byVersion[k]
		if vt == nil {
			vt = &fleetVersionTotal{Version: r.Version, BuildID: r.BuildID}
			byVersion[k] = vt
		}
		vt.Devices++
		if r.Committed != nil && *r.Committed {
			vt.Committed++
		} else {
			vt.Uncommitted++
		}
	}
	for _, vt := range byVersion {
		doc.Totals.Versions = append(doc.Totals.Versions, *vt)
	}
	sort.Slice(doc.Totals.Versions, func(i, j int) bool {
		a, b := doc.Totals.Versions[i], doc.Totals.Versions[j]
		if a.Devices != b.Devices {
			return a.Devices > b.Devices
		}
		return a.Version+a.BuildID < b.Version+b.BuildID
	})
	switch {
	case len(codes) == 0:
		doc.ExitCode = ExitOK
	case len(codes) == 1:
		for c := range codes {
			doc.ExitCode = c
		}
	default:
		doc.ExitCode = ExitFailure
	}
	if f.G.JSON {
		if err := writeJSON(f.IO.Out, doc); err != nil {
			return err
		}
	} else {
		f.writeFleetBoot(doc)
	}
	if ctx.Err() != nil {
		return &InterruptedError{Msg: "the devices not read are marked interrupted"}
	}
	if doc.ExitCode != ExitOK {
		return &ExitError{Code: doc.ExitCode, Err: fmt.Errorf("%d of %d devices could not be read", doc.Totals.Unanswered, doc.Totals.Devices), Silent: !f.G.JSON}
	}
	return nil
}

// readFleetBoot reads one device as `otactl bootstate` does.
func readFleetBoot(ctx context.Context, f *Factory, t fleet.Target) fleetBootRow {
	row := fleetBootRow{Device: t.Name, Address: t.Address}
	sub := f.deviceFactory(t, io.Discard)
	var bs ota.BootState
	var info *ota.SysInfo
	err := sub.withDevice(ctx, func(ctx context.Context, c *rpc.Client, d *ota.Device) error {
		var err error
		bs, info, err = readBoot(ctx, d)
		return err
	})
	if err != nil {
		row.Error, row.Reason, row.ExitCode = err.Error(), reasonFor(err), ExitCode(err)
		return row
	}
	doc := bootStateDoc(bs, info)
	row.Answered, row.Reason, row.BootState = true, ota.ReasonOK, &doc
	v := ota.ViewBoot(bs, info)
	committed := v.NextIsRunning && bs.IsCommitted
	row.Committed = &committed
	if info != nil {
		row.Version, row.BuildID = info.FWVersion, info.FWID
	}
	return row
}

func (f *Factory) writeFleetBoot(doc *fleetBootDoc) {
	p := f.outPalette()
	w := tabwriter.NewWriter(&trimmedLines{w: f.IO.Out}, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "DEVICE\tVERSION\tBUILD\tSLOT\tCOMMITTED\tFALLS BACK IN")
	for _, r := range doc.Devices {
		if !r.Answered {
			// The last cell of a line is outside the columns: a long
			// error does not widen them.
			fmt.Fprintf(w, "%s\t%s\n", r.Device, p.red(string(r.Reason)+": "+r.Error))
			continue
		}
		slot := "?"
		if r.BootState.Running != nil && r.BootState.Running.Slot != nil {
			slot = fmt.Sprint(*r.BootState.Running.Slot)
		}
		committed, left := "yes", ""
		if r.Committed == nil || !*r.Committed {
			committed = p.yellow("no")
			if r.BootState.FallbackIn != nil {
				left = humanDuration(time.Duration(*r.BootState.FallbackIn * float64(time.Second)))
				if r.BootState.FallbackSlot != nil {
					left += fmt.Sprintf(" (to slot %d)", *r.BootState.FallbackSlot)
				}
			}
		}
		ver := r.Version
		if ver == "" {
			ver = "?"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Device, ver, r.BuildID, slot, committed, left)
	}
	w.Flush()
	fmt.Fprintln(f.IO.Out)
	for _, vt := range doc.Totals.Versions {
		line := fmt.Sprintf("%4d × %s (build %s): %d committed", vt.Devices, vt.Version, vt.BuildID, vt.Committed)
		if vt.Uncommitted > 0 {
			line += fmt.Sprintf(", %d not committed", vt.Uncommitted)
		}
		fmt.Fprintln(f.IO.Out, line)
	}
	if doc.Totals.Unanswered > 0 {
		fmt.Fprintf(f.IO.Out, "%4d × %s\n", doc.Totals.Unanswered, p.red("could not be read"))
	}
	fmt.Fprintf(f.IO.Out, "%d devices, %d answered\n", doc.Totals.Devices, doc.Totals.Answered)
}
