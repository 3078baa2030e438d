package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/otactl/otactl/internal/human"
	"github.com/otactl/otactl/pkg/ota/bundle"
)

// NewCmdBundle builds `otactl bundle` and its subcommands.
func NewCmdBundle(f *Factory) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bundle",
		Short: "Create, inspect and verify firmware bundles (fw.zip)",
		Long: `Work with firmware bundles: the fw.zip a Mongoose OS device takes for an
update (manifest.json first, then one stored entry per part, with sizes and
SHA-1/SHA-256 checksums). Bundles made by 'mos build' / 'mos create-fw-bundle'
are read too, signed ones included. Signed bundles carry ECDSA P-256
signatures of their manifest exactly where mos puts them (docs/security.md).`,
		Example: `  otactl bundle create -o fw.zip --platform esp32 --version 1.2.0 app:src=build/app.bin,addr=0x10000,type=app
  otactl bundle inspect fw.zip
  otactl bundle verify fw.zip && echo good

  # signing: a key pair, a signed bundle, and the check a device makes
  otactl bundle keygen -o k0.pem
  otactl bundle sign fw.zip --key k0.pem -o fw-signed.zip
  otactl bundle verify fw-signed.zip --pubkey k0.pub.pem`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return usageErrorf("bundle needs a subcommand: create, inspect, verify, sign or keygen")
		},
	}
	cmd.AddCommand(newCmdBundleCreate(f), newCmdBundleInspect(f, false), newCmdBundleInspect(f, true),
		newCmdBundleSign(f), newCmdBundleKeygen(f))
	return cmd
}

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

func newCmdBundleInspect(f *Factory, verify bool) *cobra.Command {
	use, short := "inspect FW.ZIP", "Show a bundle's manifest and parts, with checksums verified"
	example := "  otactl bundle inspect fw.zip\n  otactl bundle inspect --json fw.zip | jq .manifest.version"
	var sig sigCheckFlags
	if verify {
		use, short = "verify FW.ZIP [--pubkey [N:]PUB.pem]...", "Exit 0 only if every size and checksum in the bundle holds (and, with --pubkey, its signatures)"
		example = `  otactl bundle verify fw.zip || { echo 'corrupt bundle'; exit 1; }

  # would a device with update.key0 and update.key1 and sig_req_mask 1 take it?
  otactl bundle verify fw.zip --pubkey k0.pub.pem --pubkey k1.pub.pem --sig-req-mask 1`
	}
	cmd := &cobra.Command{
		Use:     use,
		Short:   short,
		Example: example,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageErrorf("%s takes one bundle file", cmd.Name())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runBundleInspect(f, args[0], verify, &sig)
		},
	}
	if verify {
		cmd.Long = `Read the bundle as a device does and check every entry's CRC-32 and every
part's size and SHA-1/SHA-256. With --pubkey (the device's update.keyN: a PEM
public key or its base64 form; the Nth is key N unless written N:PUB.pem), also
check the signatures and say which verify; the bundle passes only if the
device would take it: every key given must verify, or the bits of
--sig-req-mask (the device's update.sig_req_mask) when given.`
		sig.add(cmd.Flags())
		cmd.Flags().Lookup("pubkey").Usage = "[N:]PUB.pem or base64 key: check signature N with it (repeatable; the Nth is key N unless N: is given)"
		cmd.Flags().Lookup("sig-req-mask").Usage = "with --pubkey: the device's update.sig_req_mask to apply (default: every key given must verify)"
	}
	return cmd
}

type bundleEntryJSON struct {
	Name   string `json:"name"`
	Part   string `json:"part,omitempty"`
	Size   int64  `json:"size"`
	CRC32  string `json:"crc32"`
	SHA1   string `json:"sha1"`
	SHA256 string `json:"sha256"`
}

func runBundleInspect(f *Factory, path string, verify bool, sig *sigCheckFlags) error {
	var policy *bundle.SignaturePolicy
	var keyNames [bundle.MaxKeys]string
	if len(sig.PubKeys) > 0 {
		var err error
		if policy, keyNames, err = policyFromFlags("--pubkey", sig.PubKeys, "--sig-req-mask", sig.Mask); err != nil {
			return err
		}
	} else if sig.Mask != "" {
		return usageErrorf("--sig-req-mask goes with --pubkey: give the device's keys")
	}
	fh, err := openBundle(path)
	if err != nil {
		return err
	}
	defer fh.Close()
	rep, err := bundle.Inspect(fh)
	if err != nil {
		return &ExitError{Code: ExitFailure, Err: fmt.Errorf("%s is not a valid bundle: %w", path, err)}
	}
	var problems []string
	for _, p := range rep.Problems {
		problems = append(problems, p.Error())
	}
	sr := newSigReport(rep, policy, keyNames)
	if sr.err != nil {
		problems = append(problems, sr.err.Error())
	}
	m := rep.Manifest
	if f.G.JSON {
		entries := make([]bundleEntryJSON, 0, len(rep.Entries))
		for _, e := range rep.Entries {
			entries = append(entries, bundleEntryJSON{e.Name, e.Part, e.Size, fmt.Sprintf("%08x", e.CRC32), e.SHA1, e.SHA256})
		}
		doc := map[string]any{
			"file": path, "ok": len(problems) == 0, "problems": nonNil(problems),
			"manifest": json.RawMessage(rep.RawManifest), "entries": entries,
			"signed": len(rep.Signatures) > 0, "size": rep.Size, "signatures": sr.entries(),
		}
		if policy != nil {
			check := map[string]any{"sig_req_mask": policy.ReqMask, "verified_mask": sr.check.Verified, "ok": sr.err == nil}
			if sr.err != nil {
				check["error"] = sr.err.Error()
			}
			doc["signature_check"] = check
		}
		if err := writeJSON(f.IO.Out, doc); err != nil {
			return err
		}
	} else {
		out := f.IO.Out
		fmt.Fprintf(out, "%s: %s %s for %s, build %s", path, m.Name, m.Version, m.Platform, m.BuildID)
		if m.BuildTimestamp != "" {
			fmt.Fprintf(out, " (%s)", m.BuildTimestamp)
		}
		fmt.Fprintln(out)
		if m.Description != "" {
			fmt.Fprintf(out, "description: %s\n", m.Description)
		}
		sr.print(out)
		keys := make([]string, 0, len(m.Extra))
		for k := range m.Extra {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(out, "%s: %s\n", k, m.Extra[k])
		}
		tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "PART\tTYPE\tFILE\tADDR\tSIZE\tCHECK")
		entryByPart := map[string]bundle.EntryInfo{}
		for _, e := range rep.Entries {
			if e.Part != "" {
				entryByPart[e.Part] = e
			}
		}
		for _, name := range m.PartNames() {
			p := m.Parts[name]
			addr := "-"
			if p.Addr != nil {
				addr = fmt.Sprintf("0x%x", *p.Addr)
			}
			size := "-"
			check := "no data"
			if e, ok := entryByPart[name]; ok {
				size = strconv.FormatInt(e.Size, 10)
				check = "ok"
				if bundle.CheckPart(name, p, e.Size, e.SHA1, e.SHA256) != nil {
					check = "MISMATCH"
				}
			} else if p.Src != "" {
				check = "MISSING"
			} else if p.Fill != nil {
				// No data in the zip: the device fills the region.
				check = fmt.Sprintf("fill 0x%02x", *p.Fill)
				if p.Size != nil {
					size = strconv.FormatInt(*p.Size, 10)
				}
			}
			src := p.Src
			if src == "" {
				src = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", name, p.Type, src, addr, size, check)
		}
		tw.Flush()
		for _, e := range rep.Entries {
			if e.Part == "" {
				fmt.Fprintf(out, "extra entry %s (%d bytes): no part names it; a device skips it\n", e.Name, e.Size)
			}
		}
		for _, p := range problems {
			fmt.Fprintln(f.IO.ErrOut, "problem:", p)
		}
		if len(problems) == 0 && verify {
			if policy != nil {
				fmt.Fprintf(out, "bundle verified: every size and checksum holds, and a device with these keys and update.sig_req_mask %d (%s) takes it\n", policy.ReqMask, maskWord(policy.ReqMask))
			} else {
				fmt.Fprintln(out, "bundle verified: every size and checksum holds")
			}
		}
	}
	if verify && len(problems) > 0 {
		return &ExitError{Code: ExitFailure, Err: fmt.Errorf("%s failed verification: %s", path, strings.Join(problems, "; ")), Silent: f.G.JSON}
	}
	return nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// writeJSON writes v as one indented JSON document, with <, > and & as
// they are (messages quote URLs and placeholders like <device_id>).
func writeJSON(w interface{ Write([]byte) (int, error) }, v any) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return err
	}
	_, err := w.Write(buf.Bytes())
	return err
}

// humanBytes prints 512 bytes, 2.0 KiB, 1.5 MiB (internal/human).
func humanBytes(n int64) string { return human.Bytes(n) }

// openBundle opens a bundle named on the command line: a path that does not
// exist is a usage error (exit 2), any other failure to read it exit 1.
func openBundle(path string) (*os.File, error) {
	fh, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, usageErrorf("bundle %s does not exist", path)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read bundle: %w", err)
	}
	return fh, nil
}
