package cli

import (
	"encoding/json"
	"runtime/debug"
	"strings"
	"testing"
)

func TestVersionInfo(t *testing.T) {
	vcs := []debug.BuildSetting{
		{Key: "vcs", Value: "git"},
		{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
		{Key: "vcs.time", Value: "2026-03-01T10:00:00Z"},
		{Key: "vcs.modified", Value: "true"},
	}
	for _, tc := range []struct {
		name, stamped string
		bi            *debug.BuildInfo
		want          VersionInfo
		line          string
	}{
		{
			name: "go install @version: the module version",
			bi:   &debug.BuildInfo{GoVersion: "go1.26.1", Main: debug.Module{Path: "github.com/otactl/otactl", Version: "v1.2.3"}},
			want: VersionInfo{Version: "v1.2.3", Source: "module", Module: "github.com/otactl/otactl", Go: "go1.26.1"},
			line: "otactl version v1.2.3 (go1.26.1 ",
		},
		{
			name:    "make: the stamped version wins",
			stamped: "v1.2.4-3-gabcdef0",
			bi:      &debug.BuildInfo{GoVersion: "go1.26.1", Main: debug.Module{Path: "github.com/otactl/otactl", Version: "(devel)"}, Settings: vcs},
			want: VersionInfo{Version: "v1.2.4-3-gabcdef0", Source: "ldflags", Module: "github.com/otactl/otactl", Go: "go1.26.1",
				Revision: "0123456789abcdef0123456789abcdef01234567", RevisionTime: "2026-03-01T10:00:00Z", Modified: true},
			line: "otactl version v1.2.4-3-gabcdef0 (commit 0123456789ab of 2026-03-01T10:00:00Z, modified; go1.26.1 ",
		},
		{
			name: "go build in a checkout without a tag",
			bi:   &debug.BuildInfo{GoVersion: "go1.26.1", Main: debug.Module{Path: "github.com/otactl/otactl", Version: "(devel)"}, Settings: vcs[:3]},
			want: VersionInfo{Version: "dev", Source: "none", Module: "github.com/otactl/otactl", Go: "go1.26.1",
				Revision: "0123456789abcdef0123456789abcdef01234567", RevisionTime: "2026-03-01T10:00:00Z"},
			line: "otactl version dev (commit 0123456789ab of 2026-03-01T10:00:00Z; go1.26.1 ",
		},
		{
			name:    "no build information",
			stamped: "dev",
			want:    VersionInfo{Version: "dev", Source: "none"},
			line:    "otactl version dev (go1.",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := versionInfo(tc.stamped, tc.bi)
			if got.Platform == "" || got.Go == "" {
				t.Fatalf("no platform or Go version: %+v", got)
			}
			want := tc.want
			want.Platform = got.Platform
			if want.Go == "" {
				want.Go = got.Go
			}
			if got != want {
				t.Fatalf("got  %+v\nwant %+v", got, want)
			}
			if s := got.String(); !strings.HasPrefix(s, tc.line) || !strings.HasSuffix(s, got.Platform+")") {
				t.Fatalf("line %q, want it to start with %q", s, tc.line)
			}
		})
	}
}

func TestVersionCommand(t *testing.T) {
	r := run(t, nil, "version")
	want := currentVersion().String() + "\n"
	if r.code != 0 || r.stdout != want {
		t.Fatalf("exit %d, stdout %q, want %q; stderr %q", r.code, r.stdout, want, r.stderr)
	}
	if r2 := run(t, nil, "--version"); r2.code != 0 || r2.stdout != want {
		t.Fatalf("--version: exit %d, stdout %q, want %q", r2.code, r2.stdout, want)
	}
	r = run(t, map[string]string{"OTACTL_JSON": "1"}, "version")
	var doc map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil || r.code != 0 {
		t.Fatalf("exit %d, stdout %q: %v", r.code, r.stdout, err)
	}
	for _, k := range []string{"version", "source", "go", "platform"} {
		if s, _ := doc[k].(string); s == "" {
			t.Errorf("--json: no %q in %s", k, r.stdout)
		}
	}
	if r := run(t, nil, "version", "extra"); r.code != ExitUsage {
		t.Fatalf("version extra: exit %d", r.code)
	}
}
