package fleet

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// JournalFormat names the journal's first field and its version.
const (
	JournalKind    = "otactl fleet update"
	JournalVersion = 1
)

// Bundle identifies what a rollout installs: a journal of one bundle is
// not resumed with another.
type Bundle struct {
	Version string `json:"version,omitempty"`
	BuildID string `json:"build_id,omitempty"`
	// Source is the --file path or the --url (without secrets).
	Source string `json:"source"`
}

// Same reports whether b and o are the same bundle: the same build_id
// when both are known, else the same source.
func (b Bundle) Same(o Bundle) bool {
	if b.BuildID != "" && o.BuildID != "" {
		return b.BuildID == o.BuildID
	}
	return b.Source == o.Source
}

func (b Bundle) String() string {
	switch {
	case b.BuildID != "" && b.Version != "":
		return fmt.Sprintf("%s (build %s)", b.Version, b.BuildID)
	case b.BuildID != "":
		return "build " + b.BuildID
	}
	return b.Source
}

// journalHeader is the line each run writes first.
type journalHeader struct {
	Kind    string    `json:"journal"`
	Format  int       `json:"format"`
	Bundle  Bundle    `json:"bundle"`
	Commit  bool      `json:"commit"`
	Started time.Time `json:"started"`
	Devices int       `json:"devices"`
}

// journalLine is any line: a header or a device record.
type journalLine struct {
	Kind   string  `json:"journal"`
	Bundle *Bundle `json:"bundle"`
	Record
}

// Journal is the record of a rollout, one JSON line per device outcome,
// each written and fsynced as the device finishes (docs/fleet.md, "The
// journal"). It holds no secret: addresses are written without passwords.
type Journal struct {
	path string

	mu      sync.Mutex // the file and written
	f       *os.File
	written int64

	syncMu sync.Mutex // one fsync at a time; synced is what it covered
	synced int64
}

// JournalMismatchError is a journal of another bundle.
type JournalMismatchError struct {
	Path      string
	Journaled Bundle
	Bundle    Bundle
}

func (e *JournalMismatchError) Error() string {
	return fmt.Sprintf("the journal %s records a rollout of %s, not of this bundle (%s): resume that rollout with its bundle, or give another --journal file (or delete this one) to start a new rollout",
		e.Path, e.Journaled, e.Bundle)
}

// Past is what a journal says about earlier runs: the last record of each
// device, by address.
type Past struct {
	Bundle  *Bundle
	Records map[string]Record
	// Torn is true when the last line was cut short (otactl killed while
	// writing it); it is ignored.
	Torn bool
}

// ReadJournal reads the journal at path; a missing file is an empty past.
func ReadJournal(path string) (*Past, error) {
	past := &Past{Records: map[string]Record{}}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return past, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read the journal %s: %w", path, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	n := 0
	for sc.Scan() {
		n++
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var l journalLine
		if err := json.Unmarshal(line, &l); err != nil {
			if !bytes.HasSuffix(data, []byte("\n")) && isLast(sc) {
				past.Torn = true // cut while written: that device runs again
				break
			}
			return nil, fmt.Errorf("the journal %s, line %d, is not a journal line (%v): is it the journal of an otactl fleet update?", path, n, err)
		}
		switch {
		case l.Kind != "":
			if l.Kind != JournalKind || l.Bundle == nil {
				return nil, fmt.Errorf("the journal %s, line %d: not the journal of an otactl fleet update", path, n)
			}
			if past.Bundle == nil {
				b := *l.Bundle
				past.Bundle = &b
			} else if !past.Bundle.Same(*l.Bundle) {
				return nil, fmt.Errorf("the journal %s, line %d: a run of another bundle (%s, not %s): the file mixes two rollouts", path, n, l.Bundle, past.Bundle)
			}
		case l.Address != "":
			if past.Bundle == nil {
				return nil, fmt.Errorf("the journal %s, line %d: a device record before the journal's header: not the journal of an otactl fleet update", path, n)
			}
			past.Records[l.Address] = l.Record
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("cannot read the journal %s: %w", path, err)
	}
	return past, nil
}

// isLast reports whether sc has no more lines.
func isLast(sc *bufio.Scanner) bool {
	return !sc.Scan()
}

// Check refuses a journal of another bundle.
func (p *Past) Check(path string, b Bundle) error {
	if p.Bundle != nil && !p.Bundle.Same(b) {
		return &JournalMismatchError{Path: path, Journaled: *p.Bundle, Bundle: b}
	}
	return nil
}

// OpenJournal opens the journal at path for appending (creating it) and
// writes this run's header.
func OpenJournal(path string, b Bundle, commit bool, devices int, now time.Time) (*Journal, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cannot open the journal: %w", err)
	}
	j := &Journal{path: path, f: f}
	// A line cut short by an earlier crash must not swallow the header.
	if st, err := f.Stat(); err == nil && st.Size() > 0 {
		if last, err := lastByte(path); err == nil && last != '\n' {
			if err := j.write([]byte("\n")); err != nil {
				f.Close()
				return nil, err
			}
		}
	}
	h := journalHeader{Kind: JournalKind, Format: JournalVersion, Bundle: b, Commit: commit, Started: now.UTC(), Devices: devices}
	if err := j.appendJSON(h); err != nil {
		f.Close()
		return nil, err
	}
	return j, nil
}

func lastByte(path string) (byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	b := make([]byte, 1)
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if _, err := f.ReadAt(b, st.Size()-1); err != nil && !errors.Is(err, io.EOF) {
		return 0, err
	}
	return b[0], nil
}

// Append writes one device's record and fsyncs it before returning.
// Concurrent Appends share fsyncs.
func (j *Journal) Append(r Record) error {
	r.FromJournal = false
	return j.appendJSON(r)
}

func (j *Journal) appendJSON(v any) error {
	line, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return j.write(append(line, '\n'))
}

func (j *Journal) write(line []byte) error {
	j.mu.Lock()
	if j.f == nil {
		j.mu.Unlock()
		return errors.New("the journal is closed")
	}
	_, err := j.f.Write(line)
	j.written++
	mine := j.written
	j.mu.Unlock()
	if err != nil {
		return fmt.Errorf("writing the journal %s: %w", j.path, err)
	}
	j.syncMu.Lock()
	defer j.syncMu.Unlock()
	if j.synced >= mine {
		return nil // an fsync since our write covered it
	}
	j.mu.Lock()
	upto := j.written
	f := j.f
	j.mu.Unlock()
	if f == nil {
		return errors.New("the journal is closed")
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing the journal %s: %w", j.path, err)
	}
	j.synced = upto
	return nil
}

// Close closes the journal file.
func (j *Journal) Close() error {
	j.syncMu.Lock()
	defer j.syncMu.Unlock()
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		return nil
	}
	err := j.f.Close()
	j.f = nil
	return err
}
