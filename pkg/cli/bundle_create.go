package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/otactl/otactl/pkg/ota/bundle"
)

// BundleCreateOptions are the inputs of `otactl bundle create`.
type BundleCreateOptions struct {
	F           *Factory
	Output      string
	Platform    string
	Version     string
	Name        string
	BuildID     string
	Description string
	Attrs       []string
	Parts       []string
	Now         func() time.Time
	// SignKeys are --sign-key values ([N:]KEY.pem; the Nth is slot N).
	SignKeys []string
	// SignKeyPassFile holds the passphrase of encrypted keys.
	SignKeyPassFile string
}

func newCmdBundleCreate(f *Factory) *cobra.Command {
	o := &BundleCreateOptions{F: f, Now: time.Now}
	cmd := &cobra.Command{
		Use:   "create -o FW.ZIP --platform P --version V [flags] PART:src=FILE[,addr=N,type=T,KEY=VALUE] ...",
		Short: "Build a firmware bundle a device accepts",
		Long: `Build a fw.zip: manifest.json first (with size, cs_sha1 and cs_sha256 of every
part, and build_timestamp), then each part's data as a stored entry named
after its file. Each PART argument is NAME:src=FILE followed by optional
comma-separated attributes: addr=N (decimal or 0x hex), type=T, and any
KEY=VALUE, kept in the manifest. --attr KEY=VALUE adds a top-level manifest
attribute (a JSON value, or a string), e.g. the emulator's
emulator_behavior=crash_on_boot.

--sign-key KEY.pem signs the manifest as 'mos create-fw-bundle --sign-key'
does: the Nth --sign-key makes signature N (sigN, checked by the device's
update.keyN); write N:KEY.pem to pick the slot, or an empty --sign-key= to
skip one. An encrypted key asks for its passphrase on the terminal, or
reads it from the first line of --sign-key-pass-file.`,
		Example: `  # an app image and a filesystem image for an ESP32
  otactl bundle create -o fw.zip --platform esp32 --version 1.2.0 --name myapp \
    app:src=build/myapp.bin,addr=0x10000,type=app fs:src=build/fs.img,addr=0x190000,type=fs

  # a firmware the emulator will crash on at boot, to test rollback
  otactl bundle create -o bad.zip --platform esp32 --version 9.9.9 --attr emulator_behavior=crash_on_boot app:src=app.bin

  # signed by key 0 and key 1 (a device in the middle of a key rotation)
  otactl bundle create -o fw.zip --platform esp32 --version 1.2.0 --sign-key k0.pem --sign-key k1.pem app:src=app.bin`,
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Parts = args
			return runBundleCreate(cmd.Context(), o)
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&o.Output, "output", "o", "", "bundle file to write (required)")
	fl.StringVar(&o.Platform, "platform", "", "device platform, e.g. esp32, esp8266 (required)")
	fl.StringVar(&o.Version, "version", "", "firmware version, e.g. 1.2.0 (required)")
	fl.StringVar(&o.Name, "name", "app", "application name")
	fl.StringVar(&o.BuildID, "build-id", "", "build id (default: UTC timestamp/otactl)")
	fl.StringVar(&o.Description, "description", "", "description")
	fl.StringArrayVar(&o.Attrs, "attr", nil, "extra top-level manifest attribute KEY=VALUE (repeatable)")
	fl.StringArrayVar(&o.SignKeys, "sign-key", nil, "[N:]KEY.pem: sign the manifest with this ECDSA P-256 key (repeatable; the Nth is signature N unless N: is given)")
	fl.StringVar(&o.SignKeyPassFile, "sign-key-pass-file", "", "file whose first line is the passphrase of encrypted --sign-key keys (default: ask on the terminal)")
	return cmd
}

func runBundleCreate(_ context.Context, o *BundleCreateOptions) error {
	var missing []string
	for _, r := range []struct{ v, name string }{{o.Output, "-o"}, {o.Platform, "--platform"}, {o.Version, "--version"}} {
		if r.v == "" {
			missing = append(missing, r.name)
		}
	}
	if len(missing) > 0 {
		return usageErrorf("bundle create needs %s", strings.Join(missing, ", "))
	}
	if len(o.Parts) == 0 {
		return usageErrorf("bundle create needs at least one PART:src=FILE argument, e.g. app:src=build/app.bin,type=app")
	}
	now := o.Now().UTC()
	m := &bundle.Manifest{
		Name: o.Name, Platform: o.Platform, Version: o.Version, BuildID: o.BuildID,
		Description: o.Description, BuildTimestamp: now.Format(time.RFC3339),
		Parts: map[string]*bundle.Part{},
	}
	if m.BuildID == "" {
		m.BuildID = now.Format("20060102-150405") + "/otactl"
	}
	for _, a := range o.Attrs {
		k, v, ok := strings.Cut(a, "=")
		if !ok || k == "" {
			return usageErrorf("--attr %q: want KEY=VALUE", a)
		}
		if m.Extra == nil {
			m.Extra = map[string]json.RawMessage{}
		}
		m.Extra[k] = jsonValue(v)
	}
	var parts []bundle.PartData
	srcs := map[string]string{}
	for _, spec := range o.Parts {
		pd, err := parsePartSpec(spec)
		if err != nil {
			return err
		}
		if _, dup := m.Parts[pd.Name]; dup {
			return usageErrorf("part %q given twice", pd.Name)
		}
		if pd.Part.Src != "" {
			if other, dup := srcs[pd.Part.Src]; dup {
				return usageErrorf("parts %q and %q both use a file named %s: rename one", other, pd.Name, pd.Part.Src)
			}
			srcs[pd.Part.Src] = pd.Name
		}
		p := pd.Part
		m.Parts[pd.Name] = &p
		if pd.Open != nil { // a fill part carries no data
			parts = append(parts, pd)
		}
	}
	signers, err := loadSigners("--sign-key", o.SignKeys, o.F.passphrase("--sign-key-pass-file", o.SignKeyPassFile))
	if err != nil {
		return err
	}
	if err := bundle.CreateFile(o.Output, m, parts, &bundle.CreateOptions{Time: now, Signers: signers}); err != nil {
		return fmt.Errorf("creating %s: %w", o.Output, err)
	}
	st, err := os.Stat(o.Output)
	if err != nil {
		return err
	}
	if o.F.G.JSON {
		return writeJSON(o.F.IO.Out, map[string]any{"file": o.Output, "size": st.Size(), "platform": m.Platform,
			"version": m.Version, "build_id": m.BuildID, "parts": len(m.Parts), "signatures": signerSlots(signers)})
	}
	// Every part counts, fill parts (no data in the zip) included.
	fmt.Fprintf(o.F.IO.Out, "wrote %s: %s %s for %s, build %s, %d part(s), %s",
		o.Output, m.Name, m.Version, m.Platform, m.BuildID, len(m.Parts), humanBytes(st.Size()))
	if slots := signerSlots(signers); len(slots) > 0 {
		fmt.Fprintf(o.F.IO.Out, ", signed: %s", sigNames(slots))
	}
	fmt.Fprintln(o.F.IO.Out)
	return nil
}

// jsonValue keeps v as JSON when it is a JSON number, bool, null, object
// or array, and makes it a JSON string otherwise.
func jsonValue(v string) json.RawMessage {
	t := strings.TrimSpace(v)
	if t != "" && json.Valid([]byte(t)) && !strings.HasPrefix(t, `"`) {
		return json.RawMessage(t)
	}
	b, _ := json.Marshal(v)
	return b
}

// parsePartSpec reads NAME:src=FILE[,addr=N,type=T,KEY=VALUE...].
func parsePartSpec(spec string) (bundle.PartData, error) {
	name, rest, ok := strings.Cut(spec, ":")
	if !ok || name == "" || rest == "" {
		return bundle.PartData{}, usageErrorf("part %q: want NAME:src=FILE[,addr=N,type=T]", spec)
	}
	p := bundle.Part{Type: name}
	var file string
	var fill *int64
	for _, kv := range strings.Split(rest, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return bundle.PartData{}, usageErrorf("part %q: %q is not KEY=VALUE", name, kv)
		}
		switch k {
		case "src":
			file = v
		case "type":
			p.Type = v
		case "addr", "fill", "size":
			n, err := strconv.ParseInt(v, 0, 64)
			if err != nil || n < 0 {
				return bundle.PartData{}, usageErrorf("part %q: %s=%q is not a number (decimal or 0x hex)", name, k, v)
			}
			switch k {
			case "addr":
				p.Addr = bundle.Int64(n)
			case "fill":
				fill = bundle.Int64(n)
			case "size":
				p.Size = bundle.Int64(n)
			}
		case "cs_sha1", "cs_sha256":
			return bundle.PartData{}, usageErrorf("part %q: %s is computed, do not give it", name, k)
		default:
			if p.Extra == nil {
				p.Extra = map[string]json.RawMessage{}
			}
			p.Extra[k] = jsonValue(v)
		}
	}
	if file == "" {
		if fill != nil && p.Size != nil {
			p.Fill = fill
			return bundle.PartData{Name: name, Part: p}, nil
		}
		return bundle.PartData{}, usageErrorf("part %q has no src=FILE (a part without data needs fill=N,size=N)", name)
	}
	if p.Size != nil {
		return bundle.PartData{}, usageErrorf("part %q: size is computed from src, do not give it", name)
	}
	st, err := os.Stat(file)
	if err != nil {
		return bundle.PartData{}, usageErrorf("part %q: %v", name, err)
	}
	if st.IsDir() {
		return bundle.PartData{}, usageErrorf("part %q: %s is a directory; give a file (build a filesystem image first)", name, file)
	}
	p.Src = filepath.Base(file)
	if err := bundle.ValidSrc(p.Src); err != nil {
		return bundle.PartData{}, usageErrorf("part %q: %v", name, err)
	}
	return bundle.FileData(name, p, file), nil
}
