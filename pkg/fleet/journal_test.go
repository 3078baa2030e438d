package fleet

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

func TestJournalResume(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rollout.journal")
	b := Bundle{Version: "2.0.0", BuildID: "b2", Source: "fw.zip"}
	ts := targets(6)
	synctest.Test(t, func(t *testing.T) {
		j, err := OpenJournal(path, b, true, len(ts), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		f := &fakeRunner{outcomes: map[string]Outcome{"d003": RolledBack, "d004": Skipped, "d005": UpdatedUncommitted}}
		r := &Rollout{Plan: Plan{Parallel: 2, MaxFailures: Size{N: 5, set: true}, Commit: true}, Targets: ts, Runner: f, Journal: j}
		r.Run(t.Context(), t.Context())
		j.Close()
	})
	data, _ := os.ReadFile(path)
	if strings.Contains(string(data), "password") || strings.Count(string(data), "\n") != 7 {
		t.Fatalf("journal:\n%s", data)
	}

	past, err := ReadJournal(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := past.Check(path, b); err != nil {
		t.Fatal(err)
	}
	var mm *JournalMismatchError
	if err := past.Check(path, Bundle{Version: "2.0.1", BuildID: "b3", Source: "fw.zip"}); !errors.As(err, &mm) || !strings.Contains(err.Error(), "2.0.0 (build b2)") {
		t.Errorf("another bundle: %v", err)
	}
	// A second run retries what did not end well (d003 rolled back, d005
	// uncommitted under --commit) and keeps the others.
	done := map[int]Record{}
	for i, tg := range ts {
		if rec, ok := past.Records[tg.Address]; ok && rec.Outcome.Ok(true) {
			done[i] = rec
		}
	}
	if len(done) != 4 {
		t.Fatalf("done from the journal: %v", done)
	}
	synctest.Test(t, func(t *testing.T) {
		j, err := OpenJournal(path, b, true, len(ts), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		defer j.Close()
		f := &fakeRunner{}
		r := &Rollout{Plan: Plan{Parallel: 2, Commit: true}, Targets: ts, Runner: f, Journal: j, Done: done}
		sum := r.Run(t.Context(), t.Context())
		if len(f.ran) != 2 || f.ran[0] != "d003" && f.ran[1] != "d003" {
			t.Errorf("second run ran %v, want d003 and d005", f.ran)
		}
		if !sum.Ok(true) || !sum.Records[0].FromJournal || sum.Records[2].FromJournal {
			t.Errorf("second run: %+v", sum.Records)
		}
	})
}

// A line cut short by a crash is ignored (that device runs again), and the
// next run's header starts on a line of its own.
func TestJournalTornLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j")
	b := Bundle{BuildID: "b2", Source: "fw.zip"}
	j, err := OpenJournal(path, b, false, 2, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := j.Append(Record{Device: "d1", Address: "mqtt://b/d1", Result: Result{Outcome: UpdatedUncommitted}}); err != nil {
		t.Fatal(err)
	}
	j.Close()
	fh, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	fh.WriteString(`{"device":"d2","address":"mqtt://b/d2","outc`)
	fh.Close()
	past, err := ReadJournal(path)
	if err != nil || !past.Torn || len(past.Records) != 1 {
		t.Fatalf("past %+v, %v", past, err)
	}
	j, err = OpenJournal(path, b, false, 2, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	j.Close()
	if past, err = ReadJournal(path); err == nil {
		t.Fatalf("a torn line in the middle must be an error, read %+v", past)
	}
	// What the user sees names the line.
	if !strings.Contains(err.Error(), "line 3") {
		t.Errorf("error %v", err)
	}
}

func TestJournalNotAJournal(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"devices": "mqtt://b/d1\nmqtt://b/d2\n",
		"other":   `{"journal":"something else","bundle":{"source":"x"}}` + "\n",
		"nohead":  `{"device":"d1","address":"mqtt://b/d1","outcome":"skipped"}` + "\n",
	} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(content), 0o644)
		if _, err := ReadJournal(p); err == nil {
			t.Errorf("%s: read as a journal", name)
		}
	}
}

// Concurrent appends share fsyncs and lose nothing.
func TestJournalConcurrentAppends(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j")
	j, err := OpenJournal(path, Bundle{BuildID: "b"}, false, 200, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ts := targets(200)
	errs := make(chan error, len(ts))
	for _, tg := range ts {
		go func() {
			errs <- j.Append(Record{Device: tg.Name, Address: tg.Address, Result: Result{Outcome: Skipped}})
		}()
	}
	for range ts {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	j.Close()
	past, err := ReadJournal(path)
	if err != nil || len(past.Records) != 200 {
		t.Fatalf("%d records, %v", len(past.Records), err)
	}
	if err := j.Append(Record{}); err == nil {
		t.Error("append after close")
	}
	_ = context.Background
}

// Devices that failed in an earlier run go last, and never make the
// canary group.
func TestRolloutRetriesLast(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeRunner{}
		r := &Rollout{Plan: Plan{Parallel: 1, Canary: 1}, Targets: targets(4), Runner: f, Retry: map[int]bool{0: true, 2: true}}
		sum := r.Run(t.Context(), t.Context())
		if got := strings.Join(f.ran, ","); got != "d002,d004,d001,d003" {
			t.Errorf("order %s, want d002,d004,d001,d003", got)
		}
		if !sum.Records[1].Canary || sum.Records[0].Canary {
			t.Errorf("canary: %+v", sum.Records)
		}
	})
}
