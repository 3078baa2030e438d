package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Ctrl-C during a rollout stops starting devices, lets those in flight
// finish, prints the summary (here the --json document) and exits 1; the
// journal then resumes the rollout.
func TestFleetUpdateInterrupted(t *testing.T) {
	em := startFleetEmulator(t, "embedded:127.0.0.1:0", "int-", 3)
	fw := fleetBundle(t, t.TempDir(), "2.0.0")
	journal := filepath.Join(t.TempDir(), "rollout.jsonl")
	// One start a minute: once the first device finished, the next start
	// is far away, and the interrupt comes while the rollout waits for it.
	var out, errOut bytes.Buffer
	cmd := exec.Command("otactl", "fleet", "update", "--file", fw, "--devices", em.inventory, "--commit",
		"--canary", "0", "--max-per-minute", "1", "--journal", journal, "--json")
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		data, _ := os.ReadFile(journal)
		if strings.Count(string(data), `"device"`) >= 1 {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("no device finished:\n%s\n%s", out.String(), errOut.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("exit: %v, want 1\n%s", err, errOut.String())
	}
	var doc fleetUpdateDoc
	if err := json.Unmarshal(out.Bytes(), &doc); err != nil {
		t.Fatalf("--json: %v\n%s", err, out.String())
	}
	if doc.Result != "interrupted" || doc.Stopped == nil || doc.Stopped.Reason != "interrupted" ||
		doc.Totals.ByOutcome["updated-committed"] != 1 || doc.Totals.ByOutcome["not-started"] != 2 {
		t.Fatalf("interrupted rollout: result %s, stopped %+v, totals %+v", doc.Result, doc.Stopped, doc.Totals)
	}
	if !strings.Contains(errOut.String(), "interrupted: no more devices were started") {
		t.Errorf("stderr: %s", errOut.String())
	}
	// The same command again goes on with the two others.
	o, e, code := runOtactl(t, "fleet", "update", "--file", fw, "--devices", em.inventory, "--commit",
		"--canary", "0", "--journal", journal, "--json")
	doc = fleetUpdateDoc{}
	if json.Unmarshal([]byte(o), &doc); code != 0 || doc.Totals.Ran != 2 || doc.Totals.Ok != 3 {
		t.Errorf("resume: exit %d, totals %+v\n%s", code, doc.Totals, e)
	}
}

// fleetAnswered counts the devices that answer `fleet bootstate` within a
// short timeout.
func fleetAnswered(t *testing.T, inventory string) int {
	t.Helper()
	out, _, _ := runOtactl(t, "--timeout", "1s", "fleet", "bootstate", "--devices", inventory, "--json")
	var doc fleetBootDocT
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("fleet bootstate --json: %v\n%s", err, out)
	}
	return doc.Totals.Answered
}

// The second Ctrl-C stops waiting for the devices in flight: here they
// are rebooting into the new firmware (for longer than the test waits),
// so none can have been seen updated. otactl exits 1 with the summary,
// each of them recorded as not known to have ended well, and says so in
// the journal; once they are back, running uncommitted on the new build,
// the same command commits them without sending the bundle again.
func TestFleetUpdateSecondInterrupt(t *testing.T) {
	const n = 3
	em := startFleetEmulator(t, "embedded:127.0.0.1:0", "int2-", n, "--reboot-delay", "10s")
	fw := fleetBundle(t, t.TempDir(), "2.0.0")
	journal := filepath.Join(t.TempDir(), "rollout.jsonl")
	var out, errOut bytes.Buffer
	cmd := exec.Command("otactl", "fleet", "update", "--file", fw, "--devices", em.inventory, "--commit",
		"--canary", "0", "--parallel", strconv.Itoa(n), "--journal", journal, "--json")
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait until every device went away: each accepted the bundle and is
	// rebooting into it.
	deadline := time.Now().Add(2 * time.Minute)
	for fleetAnswered(t, em.inventory) > 0 {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("the devices never went away to reboot:\n%s", errOut.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	for range 2 {
		if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond) // two interrupts, not one delivered twice
	}
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("exit: %v, want 1\n%s", err, errOut.String())
	}
	var doc fleetUpdateDoc
	if err := json.Unmarshal(out.Bytes(), &doc); err != nil {
		t.Fatalf("--json: %v\n%s\n%s", err, out.String(), errOut.String())
	}
	if doc.Result != "interrupted" || doc.Totals.Ran != n || doc.Totals.Ok != 0 {
		t.Fatalf("interrupted rollout: result %s, totals %+v\n%s", doc.Result, doc.Totals, out.String())
	}
	for _, d := range doc.Devices {
		if d.Outcome != "unreachable" || d.Reason != "interrupted" {
			t.Errorf("%s: %s (%s), want unreachable (interrupted): otactl stopped waiting, it cannot tell what the device runs", d.Device, d.Outcome, d.Reason)
		}
	}
	data, err := os.ReadFile(journal)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(string(data), `"outcome":"unreachable"`); got != n {
		t.Errorf("the journal records %d devices unreachable, want %d:\n%s", got, n, data)
	}

	// Back from their reboot, on the new build, uncommitted.
	deadline = time.Now().Add(2 * time.Minute)
	for fleetAnswered(t, em.inventory) < n {
		if time.Now().After(deadline) {
			t.Fatal("the devices did not come back")
		}
		time.Sleep(200 * time.Millisecond)
	}
	vers, slots := fleetSlots(t, em.inventory)
	for _, id := range em.ids {
		if vers[id] != "2.0.0 uncommitted" {
			t.Fatalf("%s runs %q after its reboot, want 2.0.0 uncommitted", id, vers[id])
		}
	}
	o, e, code := runOtactl(t, "fleet", "update", "--file", fw, "--devices", em.inventory, "--commit",
		"--canary", "0", "--journal", journal, "--json")
	doc = fleetUpdateDoc{}
	if json.Unmarshal([]byte(o), &doc); code != 0 || doc.Totals.Ran != n || doc.Totals.ByOutcome["updated-committed"] != n {
		t.Fatalf("rerun: exit %d, totals %+v\n%s\n%s", code, doc.Totals, o, e)
	}
	after, afterSlots := fleetSlots(t, em.inventory)
	for _, id := range em.ids {
		if after[id] != "2.0.0" || afterSlots[id] != slots[id] {
			t.Errorf("%s runs %q from slot %d after the rerun, want 2.0.0 committed from slot %d (not updated again)", id, after[id], afterSlots[id], slots[id])
		}
	}
}
