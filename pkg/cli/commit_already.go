package cli

import (
	"context"
	"fmt"

	"github.com/otactl/otactl/pkg/ota"
)

// alreadyCommitted reports a commit with nothing left to do (the firmware
// was committed before otactl asked, or by someone else meanwhile): exit 0,
// so that scripts can run `otactl commit` whenever they want a firmware
// kept. It says which firmware that is, from Sys.GetInfo when the device
// has it: committed is not "your update is committed" — a firmware that
// fell back is committed too (docs/commands.md, "commit").
func (f *Factory) alreadyCommitted(ctx context.Context, d *ota.Device, bs ota.BootState) error {
	info, ierr := d.GetInfo(ctx)
	if f.G.JSON {
		doc := map[string]any{"committed": true, "already_committed": true, "boot_state": bootFieldsOf(&bs)}
		if ierr == nil {
			doc["info"] = rawJSON(info.Raw)
		}
		return writeJSON(f.IO.Out, doc)
	}
	runs := ""
	if ierr == nil && info.FWVersion != "" {
		runs = fmt.Sprintf(" (%s %s runs)", info.App, info.FWVersion)
		if info.FWID != "" {
			runs = fmt.Sprintf(" (%s %s, build %s, runs)", info.App, info.FWVersion, info.FWID)
		}
	}
	f.out("already committed: slot %d is active and committed%s; nothing to commit.", bs.ActiveSlot, runs)
	return nil
}
