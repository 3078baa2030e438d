package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// An unknown shell is a usage error, not help text on stdout with exit 0
// (a script redirecting it to a completion file would install the help).
func TestCompletionUnknownShell(t *testing.T) {
	for _, args := range [][]string{{"completion", "tcsh"}, {"completion"}} {
		r := run(t, nil, args...)
		if r.code != ExitUsage || r.stdout != "" || !strings.Contains(r.stderr, "bash, fish, powershell, zsh") {
			t.Errorf("%v: exit %d, stdout %.80q, stderr %q", args, r.code, r.stdout, r.stderr)
		}
	}
}

// pflag takes a `backquoted` word in a flag's usage as the name of its
// value in --help ("--commit-timeout otactl commit"): usages must not have
// any.
func TestFlagUsageHasNoBackquotes(t *testing.T) {
	root := NewRootCmd(&Factory{IO: &IOStreams{Out: &bytes.Buffer{}, ErrOut: &bytes.Buffer{}}})
	walk(root, func(c *cobra.Command) {
		c.Flags().VisitAll(func(fl *pflag.Flag) {
			if strings.Contains(fl.Usage, "`") {
				t.Errorf("%s --%s: usage has a backquote: %q", c.CommandPath(), fl.Name, fl.Usage)
			}
		})
	})
}
