package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The shell blocks of the README and of the guides are run as a reader
// pastes them (docs/development.md, "Docs that run"):
//
//   - every ```sh or ```bash block runs, unless the line before its fence is
//     <!-- doctest: skip REASON -->, with a reason (hardware, the network,
//     installing into the system);
//   - the runnable blocks of one file run in order, in one bash, in an empty
//     directory of their own (as HOME too), with the otactl under test on
//     PATH, under `set -eo pipefail`: a command that fails fails the test,
//     naming the file and line;
//   - a block whose first line is #! is a script: it is saved and run with
//     bash on its own, in the same directory;
//   - a transcript (`$ otactl …` followed by output) is a ```console block,
//     never ```sh.
//
// Whatever the blocks leave running in the background is killed at the end.

// docBlock is one fenced shell block of a markdown file.
type docBlock struct {
	file string
	line int // the line of the first line of code
	code string
	skip string // the reason, when it is not run
}

var doctestMarker = regexp.MustCompile(`^<!--\s*doctest:\s*(\S+)\s*(.*?)\s*-->$`)

// docBlocks extracts the shell blocks of a markdown file.
func docBlocks(t *testing.T, path string) []docBlock {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	var blocks []docBlock
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		fence, ok := strings.CutPrefix(strings.TrimLeft(l, " "), "```")
		if !ok {
			continue
		}
		lang := strings.Fields(fence + " x")[0]
		start := i + 1
		end := start
		for end < len(lines) && !strings.HasPrefix(strings.TrimLeft(lines[end], " "), "```") {
			end++
		}
		if end == len(lines) {
			t.Fatalf("%s:%d: unterminated code block", path, i+1)
		}
		i = end
		if lang != "sh" && lang != "bash" && lang != "shell" {
			continue
		}
		blk := docBlock{file: filepath.Base(path), line: start + 1, code: strings.Join(lines[start:end], "\n") + "\n"}
		if start >= 2 {
			if m := doctestMarker.FindStringSubmatch(strings.TrimSpace(lines[start-2])); m != nil {
				if m[1] != "skip" || m[2] == "" {
					t.Fatalf("%s:%d: want <!-- doctest: skip REASON -->, got %q", path, start-1, lines[start-2])
				}
				blk.skip = m[2]
			}
		}
		for j, cl := range lines[start:end] {
			if strings.HasPrefix(cl, "$ ") {
				t.Errorf("%s:%d: a transcript in a ```%s block: make it ```console", path, start+j+1, lang)
			}
		}
		blocks = append(blocks, blk)
	}
	return blocks
}

// TestDocBlocks runs the shell blocks of README.md, docs/quickstart.md and
// docs/emulator.md.
func TestDocBlocks(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("runs every example of the docs")
	}
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	root := repoRoot(t)
	nrun, nskip := 0, 0
	for _, tc := range []struct {
		file string
		// minRun is how many blocks of the file must run: a guide whose
		// examples are all marked skip tests nothing.
		minRun int
	}{
		{"README.md", 1},
		{"docs/quickstart.md", 5},
		{"docs/emulator.md", 6},
	} {
		blocks := docBlocks(t, filepath.Join(root, tc.file))
		var run []docBlock
		for _, b := range blocks {
			if b.skip == "" {
				run = append(run, b)
			} else {
				t.Logf("%s:%d: not run: %s", b.file, b.line, b.skip)
			}
		}
		if len(run) < tc.minRun {
			t.Errorf("%s: only %d of its %d shell blocks run (want at least %d)", tc.file, len(run), len(blocks), tc.minRun)
		}
		nrun, nskip = nrun+len(run), nskip+len(blocks)-len(run)
		t.Run(filepath.Base(tc.file), func(t *testing.T) {
			t.Parallel()
			runDocBlocks(t, run)
		})
	}
	if nrun <= nskip {
		t.Errorf("%d shell blocks run and %d are skipped: most examples must run", nrun, nskip)
	}
}

// runDocBlocks runs blocks as one paste into one shell.
func runDocBlocks(t *testing.T, blocks []docBlock) {
	t.Helper()
	for _, b := range blocks {
		if strings.Contains(b.code, "jq ") {
			if _, err := exec.LookPath("jq"); err != nil {
				t.Skipf("%s:%d uses jq, which is not installed (apt-get install jq; .ci/run installs it)", b.file, b.line)
			}
		}
	}
	dir := t.TempDir()
	work := filepath.Join(dir, "work")
	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}
	// where[n] is the doc line of line n+1 of the script.
	var script strings.Builder
	var where []string
	add := func(line, at string) {
		script.WriteString(line + "\n")
		where = append(where, at)
	}
	add(`set -eo pipefail`, "the harness")
	add(`trap 'echo "doctest: failed at script line $LINENO (exit $?): $BASH_COMMAND" >&2' ERR`, "the harness")
	for i, b := range blocks {
		at := func(n int) string { return b.file + ":" + strconv.Itoa(b.line+n) }
		add(fmt.Sprintf(`echo "doctest: %s:%d" >&2`, b.file, b.line), at(0))
		if strings.HasPrefix(b.code, "#!") {
			name := fmt.Sprintf("doc-script-%d.sh", i)
			if err := os.WriteFile(filepath.Join(work, name), []byte(b.code), 0o755); err != nil {
				t.Fatal(err)
			}
			add("bash ./"+name, at(0)+" (the script of that block)")
			continue
		}
		for n, l := range strings.Split(strings.TrimSuffix(b.code, "\n"), "\n") {
			add(l, at(n))
		}
	}
	scriptPath := filepath.Join(dir, "doc-blocks.sh")
	if err := os.WriteFile(scriptPath, []byte(script.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(filepath.Join(dir, "output"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", scriptPath)
	cmd.Dir = work
	cmd.Env = append(os.Environ(), "HOME="+work, "NO_COLOR=1", "TMPDIR="+dir)
	cmd.Env = withoutEnv(cmd.Env, "OTACTL_", "MOS_")
	// Its own process group: whatever the blocks started in the
	// background goes with it. The output goes to a file, so that Wait
	// does not wait for background processes that still hold it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	runErr := cmd.Wait()
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	output, _ := os.ReadFile(out.Name())
	if runErr != nil {
		msg := string(output)
		if m := regexp.MustCompile(`doctest: failed at script line (\d+)`).FindStringSubmatch(msg); m != nil {
			if n, _ := strconv.Atoi(m[1]); n >= 1 && n <= len(where) {
				msg += "\n=> the failing line is " + where[n-1]
			}
		}
		if ctx.Err() != nil {
			msg += "\n=> the blocks did not finish within the timeout"
		}
		t.Fatalf("the blocks failed: %v\n%s", runErr, msg)
	}
	t.Logf("output:\n%s", output)
}

// withoutEnv drops the variables with these prefixes from env: a reader's
// shell has none of them set.
func withoutEnv(env []string, prefixes ...string) []string {
	var out []string
	for _, kv := range env {
		keep := true
		for _, p := range prefixes {
			if strings.HasPrefix(kv, p) {
				keep = false
			}
		}
		if keep {
			out = append(out, kv)
		}
	}
	return out
}
