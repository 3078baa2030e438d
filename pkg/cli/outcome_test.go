package cli

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// The device accepts the update but never reboots, answering all along:
// the update did not take (exit 6, NOT APPLIED), it is not an unreachable
// device (exit 5).
func TestUpdateNeverRebootsIsNotApplied(t *testing.T) {
	d := newScriptedDevice()
	d.onUpdate = func(d *scriptedDevice) {
		d.boot = map[string]any{"active_slot": 1, "revert_slot": 0, "is_committed": false, "commit_timeout": 300}
		d.state = 3
	}
	port := d.start(t)
	r := run(t, nil, "--port", port, "--timeout", "2s", "update", "--url", "http://127.0.0.1:1/fw.zip")
	if r.code != ExitUpdate || !strings.Contains(r.stdout, "NOT APPLIED:") || !strings.Contains(r.stdout, "did not reboot within 2s") {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

// The new firmware is seen uncommitted, but its commit timeout expires
// before otactl commits it: the device fell back to the old firmware. That
// is a rollback (exit 6), not "nothing to commit" (exit 3).
func TestUpdateCommitTooLateIsRolledBack(t *testing.T) {
	for _, jsonOut := range []bool{false, true} {
		d := newScriptedDevice()
		d.onUpdate = func(d *scriptedDevice) { // reboots at once into the new firmware
			d.version, d.bootedAt = "2.0", time.Now()
			d.boot = map[string]any{"active_slot": 1, "revert_slot": 0, "is_committed": false, "commit_timeout": 1}
			d.onCommit = func(d *scriptedDevice) { // the commit timer fired first: back to slot 0
				d.version, d.bootedAt = "1.0", time.Now()
				d.boot = map[string]any{"active_slot": 0, "revert_slot": 0, "is_committed": true, "commit_timeout": 0}
			}
		}
		port := d.start(t)
		args := []string{"--port", port, "update", "--url", "http://127.0.0.1:1/fw.zip", "--commit", "--commit-timeout", "1"}
		if jsonOut {
			args = append([]string{"--json"}, args...)
		}
		r := run(t, nil, args...)
		if r.code != ExitUpdate {
			t.Fatalf("json=%v: exit %d, stdout %q, stderr %q", jsonOut, r.code, r.stdout, r.stderr)
		}
		if !jsonOut {
			if !strings.Contains(r.stdout, "ROLLED BACK:") || !strings.Contains(r.stdout, "commit timeout") {
				t.Fatalf("stdout %q, stderr %q", r.stdout, r.stderr)
			}
			continue
		}
		var doc struct {
			Result  string `json:"result"`
			Version string `json:"version"`
			After   struct {
				ActiveSlot int `json:"active_slot"`
			} `json:"after"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil || doc.Result != "rolled_back" || doc.Version != "1.0" || doc.After.ActiveSlot != 0 {
			t.Fatalf("document %+v (%v): %s", doc, err, r.stdout)
		}
	}
}

// The firmware commits itself (an app that calls mgos_upd_commit after its
// own checks) between the outcome and otactl's commit: success.
func TestUpdateCommittedByItselfMeanwhile(t *testing.T) {
	d := newScriptedDevice()
	d.onUpdate = func(d *scriptedDevice) {
		d.version, d.bootedAt = "2.0", time.Now()
		d.boot = map[string]any{"active_slot": 1, "revert_slot": 0, "is_committed": false, "commit_timeout": 300}
		d.onCommit = func(d *scriptedDevice) { d.boot["is_committed"] = true }
	}
	port := d.start(t)
	r := run(t, nil, "--port", port, "update", "--url", "http://127.0.0.1:1/fw.zip", "--commit")
	if r.code != 0 || !strings.Contains(r.stdout, "updated: slot 1 runs app 2.0, committed") {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}
