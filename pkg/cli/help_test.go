package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

func TestEveryCommandHasAnExample(t *testing.T) {
	root := NewRootCmd(&Factory{IO: &IOStreams{Out: &bytes.Buffer{}, ErrOut: &bytes.Buffer{}}})
	n := 0
	walk(root, func(c *cobra.Command) {
		n++
		if strings.TrimSpace(c.Example) == "" {
			t.Errorf("%q has no example in --help", c.CommandPath())
		}
		if c.Short == "" {
			t.Errorf("%q has no short description", c.CommandPath())
		}
	})
	if n < 20 {
		t.Fatalf("only %d commands in the tree", n)
	}
}

func TestHelpShowsExample(t *testing.T) {
	r := run(t, nil, "update", "--help")
	if r.code != 0 || !strings.Contains(r.stdout, "Examples:") || !strings.Contains(r.stdout, "--commit") {
		t.Fatalf("exit %d, stdout %q", r.code, r.stdout)
	}
}

func TestCompletionBash(t *testing.T) {
	r := run(t, nil, "completion", "bash")
	if r.code != 0 || !strings.Contains(r.stdout, "__start_otactl") {
		t.Fatalf("exit %d, stdout %.200q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestCommitTimeoutFlag(t *testing.T) {
	for in, want := range map[string]int{"300": 300, "5m": 300, "90s": 90, "0": 0, "1h": 3600} {
		var v commitTimeoutValue
		if err := v.Set(in); err != nil || v.seconds() != want {
			t.Errorf("Set(%q): %d, %v", in, v.seconds(), err)
		}
	}
	for _, in := range []string{"-1", "soon", "1.5"} {
		var v commitTimeoutValue
		if err := v.Set(in); err == nil {
			t.Errorf("Set(%q) accepted", in)
		}
	}
	var unset commitTimeoutValue
	if unset.seconds() != 300 || unset.otaValue() != 0 {
		t.Errorf("unset: %d %v", unset.seconds(), unset.otaValue())
	}
}

func TestDangerousCombinationsRefused(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"update", "--url", "http://x/fw.zip", "--commit-timeout", "0"}, "--force"},
		{[]string{"update", "--url", "http://x/fw.zip", "--no-wait", "--commit"}, "drop --no-wait"},
		{[]string{"update", "--url", "http://x/fw.zip", "--health-method", "X"}, "goes with --commit"},
		{[]string{"update"}, "exactly one of FW.ZIP, --file FW.ZIP or --url URL"},
		{[]string{"update", "--url", "u", "--file", "f"}, "exactly one of FW.ZIP, --file FW.ZIP or --url URL"},
		{[]string{"push"}, "one bundle file"},
		{[]string{"bootstate", "set"}, "at least one of"},
		{[]string{"emulator"}, "--state-dir is required"},
		{[]string{"emulator", "--state-dir", "x"}, "at least one transport"},
		{[]string{"bundle", "create", "-o", "x.zip"}, "--platform, --version"},
		{[]string{"--timeout", "0s", "status"}, "--timeout must be positive"},
	} {
		r := run(t, map[string]string{"OTACTL_PORT": "http://127.0.0.1:1/rpc"}, tc.args...)
		if r.code != ExitUsage || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%v: exit %d stderr %q, want usage error with %q", tc.args, r.code, r.stderr, tc.want)
		}
	}
}

func TestJSONErrorDocument(t *testing.T) {
	r := run(t, nil, "--json", "--port", "http://127.0.0.1:1/rpc", "bootstate")
	if r.code != ExitUnreachable || !strings.HasPrefix(r.stdout, "{") || !strings.Contains(r.stdout, `"exit_code": 5`) {
		t.Fatalf("exit %d stdout %q", r.code, r.stdout)
	}
}

func TestHumanDuration(t *testing.T) {
	for d, want := range map[string]string{"4m52s": "4m52s", "5m0s": "5m", "30s": "30s", "1h2m0s": "1h2m", "0s": "0s", "2h0m0s": "2h"} {
		dd, _ := parseSeconds(d)
		if got := humanDuration(dd); got != want {
			t.Errorf("humanDuration(%s) = %s, want %s", d, got, want)
		}
	}
}
