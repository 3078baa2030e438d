package cli

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
	"github.com/spf13/pflag"
)

// exitStatus is one row of the exit code table: docs/exit-codes.md has
// the same codes with the same meanings (a test compares them), plus
// examples.
type exitStatus struct {
	Code    int
	Meaning string
}

// exitStatuses is the exit code table of every command.
var exitStatuses = []exitStatus{
	{ExitOK, "success"},
	{ExitFailure, "any other failure"},
	{ExitUsage, "usage error"},
	{ExitRPCError, "the device returned an RPC error"},
	{ExitAuth, "authentication failed, access refused, or TLS failed"},
	{ExitUnreachable, "device unreachable or timed out"},
	{ExitUpdate, "the update did not take"},
}

// fleetUpdateExitStatuses is `fleet update`'s table, one code for a whole
// rollout (docs/exit-codes.md, "fleet update and fleet bootstate").
var fleetUpdateExitStatuses = []exitStatus{
	{ExitOK, "every device ended updated (committed, with --commit) or already ran the bundle's build"},
	{ExitFailure, "interrupted, or the journal could not be written"},
	{ExitUsage, "a usage error before any device was contacted (a bad inventory line, flag or journal)"},
	{ExitAuth, "no device was updated and every device that failed refused the credentials or TLS"},
	{ExitUnreachable, "no device was updated and every device that failed was unreachable or timed out"},
	{ExitUpdate, "any device did not end updated, or the rollout stopped at --max-failures or at a failed canary"},
}

// extraEnvironment lists the variables otactl reads that are not a shared
// flag's OTACTL_<FLAG>/MOS_<FLAG> (applyEnv). configOnly ones concern the
// commands that read the config file of named devices (config.go).
var extraEnvironment = []struct {
	Name, Meaning string
	configOnly    bool
}{
	{"NO_COLOR", "any non-empty value: no colour in the output, as --no-color.", false},
	{"XDG_CONFIG_HOME", "an absolute path: the config file of named devices is $XDG_CONFIG_HOME/otactl/config.yaml.", true},
	{"HOME", "otherwise the config file is ~/.config/otactl/config.yaml; ~/ in the file's paths is HOME too.", true},
	{"AppData", "on Windows, the config file is %AppData%\\otactl\\config.yaml (unless XDG_CONFIG_HOME is set).", true},
}

// genManTree writes a man page for every available command to dir, as
// cobra's doc.GenManTree does, with ENVIRONMENT and EXIT STATUS sections
// before SEE ALSO.
func genManTree(root *cobra.Command, header *doc.GenManHeader, dir string) error {
	var err error
	walkAvailable(root, func(c *cobra.Command) {
		if err != nil {
			return
		}
		h := *header
		var buf bytes.Buffer
		if err = doc.GenMan(c, &h, &buf); err != nil {
			return
		}
		page := addManSections(buf.String(), manSections(root, c))
		name := strings.ReplaceAll(c.CommandPath(), " ", "-") + "." + h.Section
		err = os.WriteFile(filepath.Join(dir, name), []byte(page), 0o644)
	})
	return err
}

// walkAvailable calls fn for c and every descendant that gets a man page.
func walkAvailable(c *cobra.Command, fn func(*cobra.Command)) {
	fn(c)
	for _, s := range c.Commands() {
		if s.IsAvailableCommand() && !s.IsAdditionalHelpTopicCommand() {
			walkAvailable(s, fn)
		}
	}
}

// addManSections inserts sections (roff) before SEE ALSO, or at the end.
func addManSections(page, sections string) string {
	if i := strings.Index(page, "\n.SH SEE ALSO"); i >= 0 {
		return page[:i+1] + sections + "\n" + page[i+1:]
	}
	return page + "\n" + sections
}

// manSections renders the ENVIRONMENT and EXIT STATUS sections of c's page.
func manSections(root, c *cobra.Command) string {
	var b strings.Builder
	b.WriteString(".SH ENVIRONMENT\n")
	b.WriteString(".PP\n" + roffEscape("A shared flag not given on the command line is read from OTACTL_<FLAG>, then MOS_<FLAG> "+
		"(upper case, dashes as underscores), so that a mos setup (MOS_PORT) works as is. A flag on the command line wins.") + "\n")
	for _, v := range commandEnvironment(root, c) {
		fmt.Fprintf(&b, ".TP\n.B %s\n%s\n", roffEscape(v.Name), roffEscape(v.Meaning))
	}
	b.WriteString("\n.SH EXIT STATUS\n")
	table := exitStatuses
	switch c.CommandPath() {
	case "otactl fleet update":
		b.WriteString(".PP\nOne exit code for the whole rollout:\n")
		table = fleetUpdateExitStatuses
	case "otactl fleet bootstate":
		b.WriteString(".PP\n" + roffEscape("0 when every device answered; otherwise the exit code that the devices that did not answer "+
			"share (5 when none could be reached), or 1 when their codes differ. The codes:") + "\n")
	}
	for _, s := range table {
		fmt.Fprintf(&b, ".TP\n.B %d\n%s\n", s.Code, roffEscape(s.Meaning))
	}
	b.WriteString(".PP\n" + roffEscape("With --json, a failure's document also carries a stable \"reason\" code. "+
		"The codes, their reasons and examples: docs/exit-codes.md.") + "\n")
	return b.String()
}

// envVar is one environment variable otactl reads.
type envVar struct{ Name, Meaning string }

// commandEnvironment lists the variables c reads: OTACTL_<FLAG> and
// MOS_<FLAG> of each shared flag it has (the root page: of every shared
// flag; a command that talks to no device ignores the device flags'
// variables, as applyEnv does), then extraEnvironment.
func commandEnvironment(root, c *cobra.Command) []envVar {
	byName := map[string]*pflag.Flag{}
	offline := c != root && isOffline(c)
	visit := func(fl *pflag.Flag) {
		if fl.Annotations[annotGlobal] == nil || (fl.Hidden && c != root) || (offline && fl.Annotations[annotDevice] != nil) {
			return
		}
		byName[fl.Name] = fl
	}
	c.LocalFlags().VisitAll(visit)
	c.InheritedFlags().VisitAll(visit)
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	sort.Strings(names)
	var vars []envVar
	for _, n := range names {
		fl := byName[n]
		key := strings.ToUpper(strings.ReplaceAll(fl.Name, "-", "_"))
		vars = append(vars, envVar{"OTACTL_" + key + ", MOS_" + key, "--" + fl.Name + ": " + fl.Usage + "."})
	}
	for _, e := range extraEnvironment {
		if !e.configOnly || byName["config"] != nil {
			vars = append(vars, envVar{e.Name, e.Meaning})
		}
	}
	return vars
}

// roffEscape makes s safe as roff text: backslashes, dashes, and a
// leading dot or quote that would start a request.
func roffEscape(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}
