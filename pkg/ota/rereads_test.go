package ota_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/ota/wire"
)

// An update with --commit reads nothing twice that it has just read on the
// same link with nothing sent in between: the identity check's Sys.GetInfo
// before OTA.Update is also the update's baseline, and the outcome probe's
// OTA.GetBootState and Sys.GetInfo (identity checked) are what OTA.Commit
// goes on from. Every round trip costs the device and the broker CPU, and
// time on a network. The checks that guard a verdict stay: the identity
// check on the new link before OTA.Update, the probe bracketed by two
// Sys.GetInfo, the boot state read after OTA.Commit.
func TestUpdaterReadsNothingTwiceInARow(t *testing.T) {
	for _, health := range []string{"", wire.AppHealth} {
		t.Run("health="+health, func(t *testing.T) {
			_, addr, log := httpDevice(t, "dev-A")
			port := "http://" + addr + "/rpc"
			data, _ := emuBundle(t, "2.0.0", "")
			path := bundleFile(t, data)
			dial := dialPort(port)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			rep := ota.Updater{Dial: dial, Address: port, File: path, ServeAddr: "127.0.0.1:0",
				Commit: true, CommitTimeout: time.Minute, RebootTimeout: 10 * time.Second, Timeout: 5 * time.Second,
				Health: ota.HealthOptions{Method: health, Grace: 5 * time.Second}}.Run(ctx)
			if rep.Result != ota.UpdatedCommitted {
				t.Fatalf("result %q: %v", rep.Result, rep.Err)
			}
			calls := log.list()
			wantFirst := []string{
				wire.SysGetInfo, wire.OTAGetBootState, // the observation before
				wire.SysGetInfo, // the identity check on the update's link, and the baseline
				wire.OTAStatus,  // the baseline
				wire.OTAUpdate,
			}
			if len(calls) < len(wantFirst) || !slices.Equal(calls[:len(wantFirst)], wantFirst) {
				t.Errorf("calls up to OTA.Update: %v, want %v", calls, wantFirst)
			}
			wantLast := []string{
				wire.OTAGetBootState, wire.OTAStatus, wire.SysGetInfo, // the outcome probe's end
				wire.OTACommit, wire.OTAGetBootState,
			}
			if health != "" {
				// The health check may take its time: the device's identity
				// is checked again after it.
				wantLast = []string{
					wire.OTAGetBootState, wire.OTAStatus, wire.SysGetInfo,
					health, wire.SysGetInfo,
					wire.OTACommit, wire.OTAGetBootState,
				}
			}
			if len(calls) < len(wantLast) || !slices.Equal(calls[len(calls)-len(wantLast):], wantLast) {
				t.Errorf("calls from the outcome on: %v, want them to end %v", calls, wantLast)
			}
		})
	}
}
