package cli

import (
	"bytes"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// manSection returns the text of section name in a roff page ("" if absent).
func manSection(page, name string) string {
	_, rest, ok := strings.Cut(page, "\n.SH "+name+"\n")
	if !ok {
		return ""
	}
	if i := strings.Index(rest, "\n.SH "); i >= 0 {
		rest = rest[:i]
	}
	return rest
}

// TestManPagesHaveEnvironmentAndExitStatus runs `otactl gen-man` and checks
// that every page has ENVIRONMENT and EXIT STATUS (every code) before SEE
// ALSO: the root page names every variable otactl reads, a command's page
// those that concern it.
func TestManPagesHaveEnvironmentAndExitStatus(t *testing.T) {
	dir := t.TempDir()
	if r := run(t, nil, "gen-man", "--dir", dir); r.code != 0 {
		t.Fatalf("gen-man: exit %d, stderr %s", r.code, r.stderr)
	}
	pages, _ := filepath.Glob(filepath.Join(dir, "*.1"))
	if len(pages) < 20 {
		t.Fatalf("only %d man pages: %v", len(pages), pages)
	}
	root := NewRootCmd(&Factory{IO: &IOStreams{Out: &bytes.Buffer{}, ErrOut: &bytes.Buffer{}}})
	var all []string // every variable: of every shared flag, and named in the source
	walk(root, func(c *cobra.Command) {
		for _, fs := range []*pflag.FlagSet{c.LocalFlags(), c.InheritedFlags()} {
			fs.VisitAll(func(fl *pflag.Flag) {
				if fl.Annotations[annotGlobal] != nil {
					key := strings.ToUpper(strings.ReplaceAll(fl.Name, "-", "_"))
					all = append(all, "OTACTL_"+key, "MOS_"+key)
				}
			})
		}
	})
	all = append(all, envVarsInSource(t)...)
	device := []string{"OTACTL_PORT", "MOS_PORT", "OTACTL_DEVICE", "OTACTL_TIMEOUT", "OTACTL_RPC_CREDS", "OTACTL_CA_CERT_FILE", "OTACTL_BAUD_RATE", "OTACTL_CONFIG", "XDG_CONFIG_HOME"}
	for _, tc := range []struct {
		page      string
		want, not []string
	}{
		{"otactl.1", all, nil},
		{"otactl-update.1", device, nil},
		{"otactl-call.1", device, nil},
		{"otactl-fleet-update.1", []string{"OTACTL_TIMEOUT", "OTACTL_RPC_CREDS", "OTACTL_CONFIG"}, []string{"OTACTL_PORT"}},
		// Commands that talk to no device ignore the device variables.
		{"otactl-bundle-create.1", nil, device},
		{"otactl-emulator.1", nil, device},
		{"otactl-version.1", nil, device},
	} {
		b, err := os.ReadFile(filepath.Join(dir, tc.page))
		if err != nil {
			t.Error(err)
			continue
		}
		env := manSection(string(b), "ENVIRONMENT")
		for _, v := range append([]string{"NO_COLOR", "OTACTL_JSON", "MOS_JSON"}, tc.want...) {
			if !strings.Contains(env, ".B "+v) && !strings.Contains(env, ", "+v+"\n") {
				t.Errorf("%s: ENVIRONMENT does not name %s", tc.page, v)
			}
		}
		var entries []string // the variables' lines, not the text
		for _, l := range strings.Split(env, "\n") {
			if strings.HasPrefix(l, ".B ") {
				entries = append(entries, l)
			}
		}
		for _, v := range tc.not {
			if strings.Contains(strings.Join(entries, "\n"), v) {
				t.Errorf("%s: ENVIRONMENT names %s, which does not concern it", tc.page, v)
			}
		}
	}
	for _, p := range pages {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		page, name := string(b), filepath.Base(p)
		env, exit := manSection(page, "ENVIRONMENT"), manSection(page, "EXIT STATUS")
		if env == "" || exit == "" || !strings.Contains(env, "NO_COLOR") {
			t.Errorf("%s: no ENVIRONMENT or EXIT STATUS section", name)
			continue
		}
		if strings.Contains(page, ".SH SEE ALSO") && strings.Index(page, ".SH EXIT STATUS") > strings.Index(page, ".SH SEE ALSO") {
			t.Errorf("%s: EXIT STATUS after SEE ALSO", name)
		}
		table := exitStatuses
		if name == "otactl-fleet-update.1" {
			table = fleetUpdateExitStatuses
		}
		for _, s := range table {
			if !strings.Contains(exit, ".B "+strconv.Itoa(s.Code)+"\n"+roffEscape(s.Meaning)+"\n") {
				t.Errorf("%s: EXIT STATUS lacks %d %q", name, s.Code, s.Meaning)
			}
		}
	}
}

// envVarsInSource returns the environment variables the non-test sources of
// otactl (pkg/ and cmd/, without test helper packages) name as string
// literals (os.Getenv("X"), getenv("X"), a list of OTACTL_*/MOS_* names),
// so that a variable added to the code and not to the man page fails the
// test.
func envVarsInSource(t *testing.T) []string {
	t.Helper()
	var files []string
	for _, dir := range []string{filepath.Join("..", "..", "pkg"), filepath.Join("..", "..", "cmd")} {
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() && (d.Name() == "testdata" || strings.HasSuffix(d.Name(), "test")) {
				return filepath.SkipDir // test helpers (mqtttest) read test-only variables
			}
			if !d.IsDir() && strings.HasSuffix(p, ".go") && !strings.HasSuffix(p, "_test.go") {
				files = append(files, p)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(files) < 50 {
		t.Fatalf("only %d source files found", len(files))
	}
	envName := regexp.MustCompile(`^(OTACTL|MOS)_[A-Z0-9_]+$`)
	seen := map[string]bool{}
	fset := token.NewFileSet()
	for _, fn := range files {
		f, err := parser.ParseFile(fset, fn, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.CallExpr:
				name := ""
				switch fun := n.Fun.(type) {
				case *ast.Ident:
					name = fun.Name
				case *ast.SelectorExpr:
					name = fun.Sel.Name
				}
				if (strings.EqualFold(name, "getenv") || name == "LookupEnv") && len(n.Args) == 1 {
					if lit, ok := n.Args[0].(*ast.BasicLit); ok && lit.Kind == token.STRING {
						v, _ := strconv.Unquote(lit.Value)
						seen[v] = true
					}
				}
			case *ast.BasicLit:
				if v, err := strconv.Unquote(n.Value); n.Kind == token.STRING && err == nil && envName.MatchString(v) {
					seen[v] = true
				}
			}
			return true
		})
	}
	if !seen["NO_COLOR"] || !seen["OTACTL_JSON"] {
		t.Fatalf("the scan of the sources missed NO_COLOR or OTACTL_JSON: %v", seen)
	}
	var out []string
	for v := range seen {
		out = append(out, v)
	}
	sort.Strings(out)
	return out
}

// TestExitStatusesMatchDocs checks the exit code tables of the man pages
// against docs/exit-codes.md.
func TestExitStatusesMatchDocs(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "exit-codes.md"))
	if err != nil {
		t.Fatal(err)
	}
	// The first table: | code | meaning | examples |. The fleet update
	// table: the first one after its heading.
	tables := markdownTables(string(b))
	if len(tables) < 2 {
		t.Fatalf("docs/exit-codes.md: %d tables", len(tables))
	}
	var got []exitStatus
	for _, row := range tables[0] {
		code, err := strconv.Atoi(row[0])
		if err != nil {
			continue
		}
		got = append(got, exitStatus{code, row[1]})
	}
	if len(got) != len(exitStatuses) {
		t.Fatalf("docs/exit-codes.md lists %v, the code %v", got, exitStatuses)
	}
	for i := range got {
		if got[i] != exitStatuses[i] {
			t.Errorf("docs/exit-codes.md: %d %q; the man pages: %d %q", got[i].Code, got[i].Meaning, exitStatuses[i].Code, exitStatuses[i].Meaning)
		}
	}
	var fleet []int
	for _, row := range tables[1] {
		if code, err := strconv.Atoi(row[0]); err == nil {
			fleet = append(fleet, code)
		}
	}
	sort.Ints(fleet)
	var codes []int
	for _, s := range fleetUpdateExitStatuses {
		codes = append(codes, s.Code)
	}
	if !slices.Equal(fleet, codes) {
		t.Errorf("docs/exit-codes.md fleet update codes %v, the man page's %v", fleet, codes)
	}
}

// markdownTables returns the cells of each table of a markdown document.
func markdownTables(doc string) [][][]string {
	var tables [][][]string
	var cur [][]string
	for _, line := range strings.Split(doc, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "|") {
			if cur != nil {
				tables = append(tables, cur)
				cur = nil
			}
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		cur = append(cur, cells)
	}
	if cur != nil {
		tables = append(tables, cur)
	}
	return tables
}
