package cli

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
)

// VersionInfo is what `otactl version` reports (docs/commands.md#version).
type VersionInfo struct {
	// Version is the release: the one stamped by `make` (-ldflags -X
	// …cli.Version), else the module version the Go tool recorded (`go
	// install github.com/otactl/otactl/cmd/otactl@v1.2.3`, or a build in a
	// tagged checkout), else "dev".
	Version string `json:"version"`
	// Source says where Version came from: "ldflags", "module" or "none".
	Source string `json:"source"`
	// Module is the main module's path, when the binary records it.
	Module string `json:"module,omitempty"`
	// Revision, RevisionTime and Modified are the version control state of
	// a build from a checkout (absent from `go install …@version` builds).
	Revision     string `json:"revision,omitempty"`
	RevisionTime string `json:"revision_time,omitempty"`
	Modified     bool   `json:"modified,omitempty"`
	// Go is the toolchain that built the binary; Platform its GOOS/GOARCH.
	Go       string `json:"go"`
	Platform string `json:"platform"`
}

// versionInfo works out the version from the ldflags-stamped value and the
// binary's build information (nil when the binary has none).
func versionInfo(stamped string, bi *debug.BuildInfo) VersionInfo {
	v := VersionInfo{Version: "dev", Source: "none", Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi != nil {
		v.Module = bi.Main.Path
		if bi.GoVersion != "" {
			v.Go = bi.GoVersion
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				v.Revision = s.Value
			case "vcs.time":
				v.RevisionTime = s.Value
			case "vcs.modified":
				v.Modified = s.Value == "true"
			}
		}
		if mv := bi.Main.Version; mv != "" && mv != "(devel)" {
			v.Version, v.Source = mv, "module"
		}
	}
	if stamped != "" && stamped != "dev" {
		v.Version, v.Source = stamped, "ldflags"
	}
	return v
}

// currentVersion is versionInfo for this binary.
func currentVersion() VersionInfo {
	bi, _ := debug.ReadBuildInfo()
	return versionInfo(Version, bi)
}

// String is the one-line form of `otactl version` and `otactl --version`:
// "otactl version v1.2.3 (commit 0123456789ab, modified; go1.26.0 linux/amd64)".
func (v VersionInfo) String() string {
	var extra []string
	if v.Revision != "" {
		rev := v.Revision
		if len(rev) > 12 {
			rev = rev[:12]
		}
		c := "commit " + rev
		if v.RevisionTime != "" {
			c += " of " + v.RevisionTime
		}
		if v.Modified {
			c += ", modified"
		}
		extra = append(extra, c)
	}
	extra = append(extra, v.Go+" "+v.Platform)
	return fmt.Sprintf("otactl version %s (%s)", v.Version, strings.Join(extra, "; "))
}

// NewCmdVersion builds `otactl version`.
func NewCmdVersion(f *Factory) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print otactl's version",
		Long: `Print otactl's version: the release stamped by 'make', or the module version
of 'go install github.com/otactl/otactl/cmd/otactl@vX.Y.Z', with the commit of
a build from a checkout, the Go toolchain and the platform. --json prints it as
a JSON document. 'otactl --version' prints the same line.`,
		Example: "  otactl version\n  otactl version --json | jq -r .version",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			v := currentVersion()
			if f.G.JSON {
				return writeJSON(f.IO.Out, v)
			}
			_, err := fmt.Fprintln(f.IO.Out, v.String())
			return err
		},
	}
}
