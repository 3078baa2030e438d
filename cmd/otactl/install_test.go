package main

import (
	"archive/zip"
	"encoding/json"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// repoRoot is the root of the repository (this package is cmd/otactl).
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("no go.mod at the repository root %s: %v", root, err)
	}
	return root
}

// TestGoInstallVersion installs otactl as the README says,
// `go install github.com/otactl/otactl/cmd/otactl@vX.Y.Z`, from a module
// proxy on disk that serves this tree as v1.99.0 (and the dependencies from
// the local module cache), and checks that `otactl version` reports the
// module version without any -ldflags.
func TestGoInstallVersion(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds otactl with the go command")
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH")
	}
	root := repoRoot(t)
	tmp := t.TempDir()
	const mod, version = "github.com/otactl/otactl", "v1.99.0"

	// The module proxy protocol (go help goproxy): list, .info, .mod, .zip.
	dir := filepath.Join(tmp, "proxy", mod, "@v")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]string{
		"list":            version + "\n",
		version + ".info": `{"Version":"` + version + `","Time":"2026-01-01T00:00:00Z"}`,
		version + ".mod":  string(gomod),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeModuleZip(t, root, mod+"@"+version, filepath.Join(dir, version+".zip"))

	modcache, err := exec.Command(gobin, "env", "GOMODCACHE").Output()
	if err != nil {
		t.Fatalf("go env GOMODCACHE: %v", err)
	}
	env := append(os.Environ(),
		"GOPROXY=file://"+filepath.Join(tmp, "proxy")+",file://"+filepath.Join(strings.TrimSpace(string(modcache)), "cache", "download"),
		"GOSUMDB=off", "GONOSUMDB=", "GOPRIVATE=", "GOTOOLCHAIN=local",
		// A module cache of its own, so that this v1.99.0 never lands in
		// the real one; writable, so that TempDir can remove it.
		"GOMODCACHE="+filepath.Join(tmp, "modcache"), "GOFLAGS=-modcacherw",
		"GOBIN="+filepath.Join(tmp, "bin"), "CGO_ENABLED=0")
	// -trimpath, as `make build` does: the packages then come from the
	// build cache whatever module cache they were read from.
	cmd := exec.Command(gobin, "install", "-trimpath", mod+"/cmd/otactl@"+version)
	cmd.Dir = tmp
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go install: %v\n%s", err, out)
	}
	otactl := filepath.Join(tmp, "bin", "otactl")
	out, err := exec.Command(otactl, "version", "--json").Output()
	if err != nil {
		t.Fatalf("otactl version --json: %v\n%s", err, out)
	}
	var v struct{ Version, Source, Module string }
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("otactl version --json: %v\n%s", err, out)
	}
	if v.Version != version || v.Source != "module" || v.Module != mod {
		t.Fatalf("otactl version --json = %s, want version %s from the module", out, version)
	}
	out, err = exec.Command(otactl, "--version").Output()
	if err != nil || !strings.HasPrefix(string(out), "otactl version "+version+" (go") {
		t.Fatalf("otactl --version: %v: %q", err, out)
	}
}

// writeModuleZip writes the module zip of the tree at root (go help
// module-zip... in short: every file under the prefix module@version/,
// without .git, build output and other modules).
func writeModuleZip(t *testing.T, root, prefix, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zw := zip.NewWriter(f)
	n := 0
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			switch rel {
			case ".git", "bin", "dist", "man", "completions":
				return filepath.SkipDir
			}
			if rel != "." {
				if _, err := os.Stat(filepath.Join(p, "go.mod")); err == nil {
					return filepath.SkipDir // another module
				}
			}
			return nil
		}
		if !d.Type().IsRegular() || rel == ".git" {
			return nil
		}
		w, err := zw.Create(prefix + "/" + rel)
		if err != nil {
			return err
		}
		src, err := os.Open(p)
		if err != nil {
			return err
		}
		defer src.Close()
		n++
		_, err = io.Copy(w, src)
		return err
	})
	if err == nil {
		err = zw.Close()
	}
	if err != nil {
		t.Fatalf("module zip: %v", err)
	}
	if n < 50 {
		t.Fatalf("module zip: only %d files under %s", n, root)
	}
}

// TestMakeInstall runs `make install` and `make uninstall` with DESTDIR and
// PREFIX, the otactl under test standing for bin/otactl (make -o build: no
// rebuild), and checks what lands where.
func TestMakeInstall(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("runs make")
	}
	makeBin, err := exec.LookPath("make")
	if err != nil {
		t.Skip("no make")
	}
	otactl, err := exec.LookPath("otactl")
	if err != nil {
		t.Fatal(err)
	}
	root := repoRoot(t)
	tmp := t.TempDir()
	dest := filepath.Join(tmp, "dest")
	vars := []string{"-o", "build", "-C", root, "BIN=" + otactl, "DESTDIR=" + dest, "PREFIX=/usr",
		"MANOUT=" + filepath.Join(tmp, "man"), "COMPOUT=" + filepath.Join(tmp, "completions")}
	mk := func(target string) {
		t.Helper()
		cmd := exec.Command(makeBin, append(vars, target)...)
		cmd.Env = withoutEnv(os.Environ(), "MAKEFLAGS=", "MFLAGS=")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("make %s: %v\n%s", target, err, out)
		}
	}
	mk("install")
	files := map[string]string{
		"usr/bin/otactl":                                  "",
		"usr/share/man/man1/otactl.1":                     ".SH EXIT STATUS",
		"usr/share/man/man1/otactl-update.1":              ".SH ENVIRONMENT",
		"usr/share/bash-completion/completions/otactl":    "__start_otactl",
		"usr/share/zsh/site-functions/_otactl":            "#compdef otactl",
		"usr/share/fish/vendor_completions.d/otactl.fish": "complete -c otactl",
	}
	for rel, want := range files {
		b, err := os.ReadFile(filepath.Join(dest, rel))
		if err != nil {
			t.Errorf("make install: %v", err)
			continue
		}
		if !strings.Contains(string(b), want) {
			t.Errorf("make install: %s lacks %q", rel, want)
		}
	}
	if st, err := os.Stat(filepath.Join(dest, "usr/bin/otactl")); err == nil && st.Mode()&0o111 == 0 {
		t.Errorf("usr/bin/otactl is not executable: %v", st.Mode())
	}
	pages, _ := filepath.Glob(filepath.Join(dest, "usr/share/man/man1/otactl*.1"))
	if len(pages) < 20 {
		t.Errorf("make install: %d man pages", len(pages))
	}
	mk("uninstall")
	var left []string
	_ = filepath.WalkDir(dest, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			left = append(left, p)
		}
		return nil
	})
	if len(left) > 0 {
		t.Fatalf("make uninstall left %v", left)
	}
}
