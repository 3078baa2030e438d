package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
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
