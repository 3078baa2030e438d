package cli

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/otactl/otactl/pkg/ota/bundle"
)

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
