package main

import (
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// releasePlatforms are the platforms of `make release` (Makefile PLATFORMS).
var releasePlatforms = []string{"linux/amd64", "linux/arm64", "darwin/amd64", "darwin/arm64", "windows/amd64", "windows/arm64"}

// listedPackage is what `go list -json` says of a package.
type listedPackage struct {
	ImportPath string
	Standard   bool
	GoFiles    []string
	CgoFiles   []string
	Error      *struct{ Err string }
	DepsErrors []*struct{ Err string }
}

// goList lists pkgs and their dependencies for GOOS/GOARCH, with or
// without cgo.
func goList(t *testing.T, platform string, cgo bool, pkgs ...string) map[string]listedPackage {
	t.Helper()
	goos, goarch, _ := strings.Cut(platform, "/")
	cmd := exec.Command("go", append([]string{"list", "-e", "-deps", "-json=ImportPath,Standard,GoFiles,CgoFiles,Error,DepsErrors"}, pkgs...)...)
	cmd.Dir = repoRoot(t)
	c := "0"
	if cgo {
		c = "1"
	}
	cmd.Env = append(os.Environ(), "GOOS="+goos, "GOARCH="+goarch, "CGO_ENABLED="+c)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list for %s: %v", platform, err)
	}
	m := map[string]listedPackage{}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p listedPackage
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		m[p.ImportPath] = p
	}
	return m
}

// cgoOnly returns the non-standard packages that, built without cgo for
// platform, lose their cgo files with nothing in their place: the
// `CGO_ENABLED=0` build of `make release` would fail on them (undefined
// names). go.bug.st/serial/enumerator on darwin is one.
func cgoOnly(t *testing.T, platform string, pkgs ...string) []string {
	t.Helper()
	with, without := goList(t, platform, true, pkgs...), goList(t, platform, false, pkgs...)
	var bad []string
	for path, p := range without {
		if p.Error != nil {
			bad = append(bad, path+": "+p.Error.Err)
			continue
		}
		w, ok := with[path]
		if p.Standard || !ok || len(w.CgoFiles) == 0 {
			continue
		}
		if slices.Equal(w.GoFiles, p.GoFiles) {
			bad = append(bad, path+" (needs cgo: "+strings.Join(w.CgoFiles, ", ")+")")
		}
	}
	slices.Sort(bad)
	return bad
}

// TestReleasePlatformsNeedNoCgo checks, without building, that otactl's
// dependencies build without cgo on every platform of `make release`: a
// dependency that needs cgo there must sit behind a build tag with a
// fallback (docs/development.md).
func TestReleasePlatformsNeedNoCgo(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("runs go list for six platforms")
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command")
	}
	mk, err := os.ReadFile(repoRoot(t) + "/Makefile")
	if err != nil {
		t.Fatal(err)
	}
	var platforms []string
	for _, l := range strings.Split(string(mk), "\n") {
		if v, ok := strings.CutPrefix(l, "PLATFORMS ?="); ok {
			platforms = strings.Fields(v)
		}
	}
	if !slices.Equal(platforms, releasePlatforms) {
		t.Fatalf("the Makefile's PLATFORMS %v, this test's %v", platforms, releasePlatforms)
	}
	// The check can fail: the serial port enumerator needs cgo on macOS.
	if bad := cgoOnly(t, "darwin/arm64", "go.bug.st/serial/enumerator"); len(bad) == 0 {
		t.Fatal("go.bug.st/serial/enumerator is not found to need cgo on darwin: the check is blind")
	}
	for _, p := range releasePlatforms {
		if bad := cgoOnly(t, p, "./cmd/otactl"); len(bad) > 0 {
			t.Errorf("%s without cgo (make release): %s", p, strings.Join(bad, "; "))
		}
	}
}
