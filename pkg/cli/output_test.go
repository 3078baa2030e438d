package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/ota"
)

// An error found before --json is parsed (an unknown flag or command in
// front of it, or --json from the environment) still gives scripts their
// one JSON document.
func TestJSONErrorDocumentBeforeFlagsAreParsed(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		args []string
		json bool
	}{
		{nil, []string{"--bogus", "bootstate", "--json"}, true},
		{nil, []string{"frobnicate", "--json"}, true},
		{nil, []string{"--bogus", "bootstate", "--json=true"}, true},
		{nil, []string{"--bogus", "bootstate", "--json=false"}, false},
		{nil, []string{"--bogus", "bootstate", "--json", "--json=false"}, false},
		{map[string]string{"OTACTL_JSON": "1"}, []string{"bootstate", "--bogus"}, true},
		{map[string]string{"MOS_JSON": "true"}, []string{"frobnicate"}, true},
		{nil, []string{"--bogus", "call", "--", "--json"}, false},
	} {
		r := run(t, tc.env, tc.args...)
		if r.code != ExitUsage {
			t.Errorf("%v %v: exit %d", tc.env, tc.args, r.code)
			continue
		}
		if !tc.json {
			if r.stdout != "" {
				t.Errorf("%v %v: stdout %q, want nothing", tc.env, tc.args, r.stdout)
			}
			continue
		}
		var doc map[string]any
		if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil || doc["exit_code"] != float64(ExitUsage) {
			t.Errorf("%v %v: stdout %q (%v)", tc.env, tc.args, r.stdout, err)
		}
	}
}

// A bar wider than the terminal wraps, and each redraw then leaves a row
// behind: lines must fit, dropping the graphic first.
func TestProgressBarFitsTheTerminal(t *testing.T) {
	for _, width := range []int{0, 20, 50, 80, 200} {
		var buf bytes.Buffer
		p := newProgressBar(&buf, true, "pushing")
		p.width = func() int { return width }
		now := time.Unix(1000, 0)
		p.now = func() time.Time { return now }
		p.Bytes(0, 300000)
		now = now.Add(3 * time.Second)
		p.Bytes(30000, 300000)
		p.Percent(45)
		for _, line := range strings.Split(buf.String(), "\r\033[K")[1:] {
			n := len([]rune(line))
			if width > 0 && n > width-1 {
				t.Errorf("width %d: line %q is %d columns", width, line, n)
			}
			if !strings.HasPrefix(line, "pushing") {
				t.Errorf("width %d: line %q lost its label", width, line)
			}
			if width >= 80 && !strings.Contains(line, "[") {
				t.Errorf("width %d: line %q lost its bar though it fits", width, line)
			}
		}
		if width == 50 && !strings.Contains(buf.String(), "10% 29.3 KiB/293.0 KiB") {
			t.Errorf("width 50: the numbers should stay, got %q", buf.String())
		}
	}
}

// --verbose writes log lines on stderr: a bar there would run into them.
func TestNoProgressBarWithVerbose(t *testing.T) {
	for _, tc := range []struct {
		g    Globals
		want bool
	}{
		{Globals{}, true},
		{Globals{Verbose: true}, false},
		{Globals{JSON: true}, false},
	} {
		f := &Factory{IO: &IOStreams{ErrOut: &bytes.Buffer{}, ErrTTY: true}, G: tc.g}
		if got := f.newProgressBar("x").enabled; got != tc.want {
			t.Errorf("%+v: bar enabled %v, want %v", tc.g, got, tc.want)
		}
	}
}

// Only a rollback is called one: an update the device never switched to
// (it failed there, or the device did not reboot) was not applied.
func TestFailedUpdateLabel(t *testing.T) {
	if got := failedLabel(string(ota.RolledBack)); got != "ROLLED BACK:" {
		t.Errorf("rolled_back: %q", got)
	}
	if got := failedLabel(string(ota.NotApplied)); got != "NOT APPLIED:" {
		t.Errorf("not_applied: %q", got)
	}
}

// JSON documents keep <, > and & readable (error messages quote
// placeholders and URLs with query strings).
func TestWriteJSONDoesNotEscapeHTML(t *testing.T) {
	var buf bytes.Buffer
	if err := writeJSON(&buf, map[string]any{"error": "use mqtt://broker/<device_id>?a=1&b=2"}); err != nil {
		t.Fatal(err)
	}
	want := "{\n  \"error\": \"use mqtt://broker/<device_id>?a=1&b=2\"\n}\n"
	if buf.String() != want {
		t.Fatalf("got %q, want %q", buf.String(), want)
	}
}
