package main

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// readEnvFile reads KEY=VALUE lines, as GitHub reads $GITHUB_ENV.
func readEnvFile(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			m[k] = v
		}
	}
	return m
}

// killPid ends the emulator the script left running.
func killPid(t *testing.T, s string) {
	pid, err := strconv.Atoi(s)
	if err != nil || pid <= 1 {
		t.Errorf("bad pid %q", s)
		return
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

// TestCIEmulatorScript runs scripts/ci-emulator.sh as the composite action
// (action.yml) does: GITHUB_ENV and GITHUB_OUTPUT point at files, and the
// next "step" finds the device through OTACTL_PORT alone.
func TestCIEmulatorScript(t *testing.T) {
	t.Parallel()
	root := repoRoot(t)
	tmp := t.TempDir()
	ghEnv, ghOut := filepath.Join(tmp, "github_env"), filepath.Join(tmp, "github_output")
	emuDir := filepath.Join(tmp, "emulator dir") // a space: quoted everywhere
	cmd := exec.Command("bash", filepath.Join(root, "scripts", "ci-emulator.sh"))
	cmd.Env = append(withoutEnv(os.Environ(), "OTACTL_", "MOS_", "GITHUB_"),
		"GITHUB_ENV="+ghEnv, "GITHUB_OUTPUT="+ghOut, "OTACTL_EMULATOR_DIR="+emuDir,
		"OTACTL_EMULATOR_ARGS=--id ci-dev --reboot-delay 50ms")
	out, err := cmd.Output()
	env := map[string]string{}
	if b, rerr := os.ReadFile(ghEnv); rerr == nil && len(b) > 0 {
		env = readEnvFile(t, ghEnv)
	}
	if pid := env["OTACTL_EMULATOR_PID"]; pid != "" {
		t.Cleanup(func() { killPid(t, pid) })
	}
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("ci-emulator.sh: %v\nstdout: %s\nstderr: %s", err, out, stderr)
	}
	port := env["OTACTL_PORT"]
	if !strings.HasPrefix(port, "http://127.0.0.1:") || env["OTACTL_EMULATOR_DIR"] != emuDir {
		t.Fatalf("GITHUB_ENV = %v", env)
	}
	outputs := readEnvFile(t, ghOut)
	if outputs["port"] != port || outputs["dir"] != emuDir || outputs["pid"] != env["OTACTL_EMULATOR_PID"] {
		t.Fatalf("GITHUB_OUTPUT = %v, GITHUB_ENV = %v", outputs, env)
	}
	if !strings.Contains(string(out), "export OTACTL_PORT="+port+" ") {
		t.Fatalf("stdout %q: no export line", out)
	}

	// The next step: only OTACTL_PORT from GITHUB_ENV.
	step := func(args ...string) []byte {
		t.Helper()
		c := exec.Command("otactl", args...)
		c.Env = append(withoutEnv(os.Environ(), "OTACTL_", "MOS_"), "OTACTL_PORT="+port)
		b, err := c.Output()
		if err != nil {
			t.Fatalf("otactl %v: %v\n%s", args, err, b)
		}
		return b
	}
	var bs struct {
		ActiveSlot  int  `json:"active_slot"`
		IsCommitted bool `json:"is_committed"`
	}
	if b := step("bootstate", "--json"); json.Unmarshal(b, &bs) != nil || bs.ActiveSlot != 0 || !bs.IsCommitted {
		t.Fatalf("otactl bootstate --json: %s", b)
	}
	// OTACTL_EMULATOR_ARGS reached the emulator.
	var info struct{ ID string }
	if b := step("call", "Sys.GetInfo"); json.Unmarshal(b, &info) != nil || info.ID != "ci-dev" {
		t.Fatalf("Sys.GetInfo: %s", info.ID)
	}
	// The device log, for an artifact.
	if b, err := os.ReadFile(filepath.Join(emuDir, "emulator.log")); err != nil || !strings.Contains(string(b), "booted") {
		t.Fatalf("emulator.log: %v: %q", err, b)
	}
}

// TestCIEmulatorScriptFails: an emulator that cannot start fails the step,
// with its log.
func TestCIEmulatorScriptFails(t *testing.T) {
	t.Parallel()
	root := repoRoot(t)
	tmp := t.TempDir()
	cmd := exec.Command("bash", filepath.Join(root, "scripts", "ci-emulator.sh"))
	cmd.Env = append(withoutEnv(os.Environ(), "OTACTL_", "MOS_", "GITHUB_"),
		"GITHUB_ENV="+filepath.Join(tmp, "github_env"), "OTACTL_EMULATOR_DIR="+tmp,
		"OTACTL_EMULATOR_ARGS=--slots 1")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("ci-emulator.sh with --slots 1 succeeded:\n%s", out)
	}
	if !strings.Contains(string(out), "exited (status 2) before it was ready") || !strings.Contains(string(out), "--slots") {
		t.Fatalf("output does not say why:\n%s", out)
	}
	if b, _ := os.ReadFile(filepath.Join(tmp, "github_env")); len(b) != 0 {
		t.Fatalf("GITHUB_ENV written on failure: %s", b)
	}
}

// TestActionRunsCIEmulatorScript checks that action.yml runs the script
// tested above, passes its inputs through the environment (never pasted
// into the script), and that the script is executable.
func TestActionRunsCIEmulatorScript(t *testing.T) {
	root := repoRoot(t)
	b, err := os.ReadFile(filepath.Join(root, "action.yml"))
	if err != nil {
		t.Fatal(err)
	}
	action := string(b)
	for _, want := range []string{
		"using: composite",
		`"$GITHUB_ACTION_PATH/scripts/ci-emulator.sh"`,
		"OTACTL_EMULATOR_ARGS: ${{ inputs.emulator-args }}",
		"OTACTL_VERSION: ${{ inputs.version }}",
		`go install -trimpath "github.com/otactl/otactl/cmd/otactl@$OTACTL_VERSION"`,
	} {
		if !strings.Contains(action, want) {
			t.Errorf("action.yml lacks %q", want)
		}
	}
	for _, line := range strings.Split(action, "\n") {
		l := strings.TrimSpace(line)
		if strings.Contains(l, "${{ inputs.") && !strings.Contains(l, ": ${{ inputs.") {
			t.Errorf("action.yml uses an input outside env/with: %q", l)
		}
	}
	st, err := os.Stat(filepath.Join(root, "scripts", "ci-emulator.sh"))
	if err != nil || st.Mode()&0o111 == 0 {
		t.Fatalf("scripts/ci-emulator.sh is not executable: %v", err)
	}
}

// TestCIRecipeSaysWhyItFailed runs the CI recipe of docs/emulator.md
// against an otactl that builds the good bundle with another version: the
// script must fail, say which check failed with the document it checked, and
// keep the emulator's log and otactl's output in $OTA_CI_LOGS.
func TestCIRecipeSaysWhyItFailed(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("runs the CI recipe of the docs")
	}
	if _, err := exec.LookPath("jq"); err != nil {
		t.Skip("the CI recipe needs jq, which is not installed (apt-get install jq; .ci/run installs it)")
	}
	real, err := exec.LookPath("otactl")
	if err != nil {
		t.Fatal(err)
	}
	var recipe string
	for _, b := range docBlocks(t, filepath.Join(repoRoot(t), "docs", "emulator.md")) {
		if strings.Contains(b.code, "# ota-ci.sh:") {
			recipe = b.code
		}
	}
	if recipe == "" {
		t.Fatal("no ota-ci.sh block in docs/emulator.md")
	}
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	// A drifted build: version 2.0.0 becomes 2.0.9.
	wrapper := "#!/usr/bin/env bash\nargs=()\nfor a in \"$@\"; do [[ $a == 2.0.0 ]] && a=2.0.9; args+=(\"$a\"); done\nexec " +
		strconv.Quote(real) + " \"${args[@]}\"\n"
	if err := os.WriteFile(filepath.Join(bin, "otactl"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(tmp, "ota-ci.sh")
	if err := os.WriteFile(script, []byte(recipe), 0o755); err != nil {
		t.Fatal(err)
	}
	logs := filepath.Join(tmp, "logs")
	cmd := exec.Command("bash", script)
	cmd.Dir = tmp
	cmd.Env = append(withoutEnv(os.Environ(), "OTACTL_", "MOS_", "PATH="),
		"PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"), "OTA_CI_LOGS="+logs, "TMPDIR="+tmp)
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("the recipe passed with a 2.0.9 bundle:\n%s", out)
	}
	for _, want := range []string{
		`FAILED: the update to 2.0.0: expected .result == "updated_committed" and .version == "2.0.0", got:`,
		`"version": "2.0.9"`,
		"ota-ci.sh FAILED (exit 1); the emulator's log and otactl's output are in " + logs,
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if b, err := os.ReadFile(filepath.Join(logs, "emulator.log")); err != nil || !strings.Contains(string(b), "booted") {
		t.Errorf("emulator.log not kept: %v: %q", err, b)
	}
	if _, err := os.Stat(filepath.Join(logs, "good.json")); err != nil {
		t.Errorf("good.json not kept: %v", err)
	}
	t.Logf("the recipe's output:\n%s", out)
}
