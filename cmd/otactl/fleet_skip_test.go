package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// fleetSlots reads `fleet bootstate --json`: each device's version (with
// " uncommitted" when it runs on trial) and the slot it runs from.
func fleetSlots(t *testing.T, inventory string) (map[string]string, map[string]int) {
	t.Helper()
	out, errOut, code := runOtactl(t, "fleet", "bootstate", "--devices", inventory, "--json")
	var doc struct {
		Devices []struct {
			Device    string `json:"device"`
			Version   string `json:"version"`
			Committed *bool  `json:"committed"`
			BootState struct {
				Running struct {
					Slot *int `json:"slot"`
				} `json:"running"`
			} `json:"bootstate"`
		} `json:"devices"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil || code != 0 {
		t.Fatalf("fleet bootstate: exit %d, %v\n%s\n%s", code, err, out, errOut)
	}
	vers, slots := map[string]string{}, map[string]int{}
	for _, d := range doc.Devices {
		vers[d.Device] = d.Version
		if d.Committed == nil || !*d.Committed {
			vers[d.Device] += " uncommitted"
		}
		slots[d.Device] = -1
		if s := d.BootState.Running.Slot; s != nil {
			slots[d.Device] = *s
		}
	}
	return vers, slots
}

// A device that already runs the bundle's build (same build_id) is skipped:
// nothing is sent, it stays on the slot it runs from. One that runs it on
// trial (uncommitted: say a run interrupted after the reboot) is committed
// under --commit, without being updated a second time.
func TestFleetUpdateSkipsDevicesOnTheBuild(t *testing.T) {
	em := startFleetEmulator(t, "embedded:127.0.0.1:0", "skip-", 4)
	fw := fleetBundle(t, t.TempDir(), "2.0.0")
	addrs := readLines(t, em.inventory)
	if _, errOut, code := runOtactl(t, "--port", addrs[0], "update", "--file", fw, "--commit"); code != 0 {
		t.Fatalf("update of %s: exit %d\n%s", addrs[0], code, errOut)
	}
	if _, errOut, code := runOtactl(t, "--port", addrs[1], "update", "--file", fw); code != 0 {
		t.Fatalf("update of %s: exit %d\n%s", addrs[1], code, errOut)
	}
	vers, slots := fleetSlots(t, em.inventory)
	first, second := em.ids[0], em.ids[1]
	if vers[first] != "2.0.0" || vers[second] != "2.0.0 uncommitted" || vers[em.ids[2]] != "1.0.0" {
		t.Fatalf("before the rollout: %v", vers)
	}
	slotBefore := map[string]int{first: slots[first], second: slots[second]}

	out, errOut, code := runOtactl(t, "fleet", "update", "--file", fw, "--devices", em.inventory, "--commit", "--canary", "0", "--json")
	var doc fleetUpdateDoc
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("fleet update --json: %v\n%s\n%s", err, out, errOut)
	}
	if code != 0 || doc.Result != "ok" || doc.Totals.ByOutcome["skipped"] != 1 || doc.Totals.ByOutcome["updated-committed"] != 3 {
		t.Fatalf("fleet update: exit %d, result %s, totals %+v\n%s\n%s", code, doc.Result, doc.Totals, out, errOut)
	}
	for _, d := range doc.Devices {
		want := "updated-committed"
		if d.Device == first {
			want = "skipped"
		}
		if d.Outcome != want {
			t.Errorf("%s ended %s, want %s", d.Device, d.Outcome, want)
		}
	}
	vers, slots = fleetSlots(t, em.inventory)
	for _, id := range em.ids {
		if vers[id] != "2.0.0" {
			t.Errorf("%s runs %q after the rollout, want 2.0.0 committed", id, vers[id])
		}
	}
	// Nothing was installed on the first two: an update would have put the
	// build in the other slot.
	for id, s := range slotBefore {
		if slots[id] != s {
			t.Errorf("%s runs from slot %d, it ran from slot %d before: it was updated again", id, slots[id], s)
		}
	}
	// The summary says so.
	out, _, code = runOtactl(t, "fleet", "update", "--file", fw, "--devices", em.inventory, "--commit")
	if code != 0 || strings.Count(out, "skipped") < 4 {
		t.Errorf("second rollout: exit %d, every device should be skipped:\n%s", code, out)
	}
}
