package cli

import (
	"crypto"
	"crypto/ecdsa"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/otactl/otactl/pkg/ota/bundle"
)

// `otactl bundle sign` and `otactl bundle keygen`, and the signature part
// of `bundle inspect` and `bundle verify` (docs/security.md).

// signerSlots returns the slots that have a signer.
func signerSlots(signers []crypto.Signer) []int {
	out := []int{}
	for i, s := range signers {
		if s != nil {
			out = append(out, i)
		}
	}
	return out
}

// sigNames is "sig0, sig2".
func sigNames(slots []int) string {
	names := make([]string, len(slots))
	for i, s := range slots {
		names[i] = "sig" + strconv.Itoa(s)
	}
	return strings.Join(names, ", ")
}

// sigReport is what a bundle's signatures amount to, for inspect and
// verify.
type sigReport struct {
	sigs   *bundle.Signatures
	parse  error
	policy *bundle.SignaturePolicy // nil: no key given, nothing checked
	names  [bundle.MaxKeys]string
	check  bundle.SigCheck
	err    error // the device would refuse the bundle
}

func newSigReport(rep *bundle.Report, policy *bundle.SignaturePolicy, names [bundle.MaxKeys]string) *sigReport {
	sr := &sigReport{policy: policy, names: names}
	sr.sigs, sr.parse = bundle.ParseSignatures(rep.Signatures)
	if policy != nil {
		sr.check, sr.err = policy.Check(rep.RawManifest, rep.Signatures)
	}
	return sr
}

type sigEntryJSON struct {
	Slot     int    `json:"slot"`
	Present  bool   `json:"present"`
	Verified *bool  `json:"verified,omitempty"`
	Key      string `json:"key,omitempty"`
}

// entries lists every signature present and every key given.
func (sr *sigReport) entries() []sigEntryJSON {
	out := []sigEntryJSON{}
	for i := range bundle.MaxKeys {
		present := sr.sigs.Sig[i] != nil
		keyed := sr.policy != nil && sr.policy.Keys[i] != nil
		if !present && !keyed {
			continue
		}
		e := sigEntryJSON{Slot: i, Present: present}
		if keyed {
			v := sr.check.Verified&(1<<i) != 0
			e.Verified, e.Key = &v, sr.names[i]
		}
		out = append(out, e)
	}
	return out
}

func (sr *sigReport) print(out io.Writer) {
	if sr.parse != nil {
		fmt.Fprintf(out, "signatures: unreadable (%v)\n", sr.parse)
	} else if slots := sr.sigs.Slots(); len(slots) == 0 {
		fmt.Fprintln(out, "signatures: none (unsigned)")
	} else if sr.policy == nil {
		fmt.Fprintf(out, "signatures: %s (not checked: give 'otactl bundle verify --pubkey')\n", sigNames(slots))
	} else {
		fmt.Fprintf(out, "signatures: %s\n", sigNames(slots))
	}
	for _, k := range sr.sigs.Bad {
		fmt.Fprintf(out, "  %s: not a base64 signature (a device cannot verify it)\n", k)
	}
	if sr.policy == nil {
		return
	}
	for _, e := range sr.entries() {
		switch {
		case e.Verified == nil:
			fmt.Fprintf(out, "  sig%d: present, no key given for slot %d\n", e.Slot, e.Slot)
		case !e.Present:
			fmt.Fprintf(out, "  sig%d: missing (key%d %s)\n", e.Slot, e.Slot, e.Key)
		case *e.Verified:
			fmt.Fprintf(out, "  sig%d: verifies with key%d (%s)\n", e.Slot, e.Slot, e.Key)
		default:
			fmt.Fprintf(out, "  sig%d: DOES NOT verify with key%d (%s)\n", e.Slot, e.Slot, e.Key)
		}
	}
}

// BundleSignOptions are the inputs of `otactl bundle sign`.
type BundleSignOptions struct {
	F        *Factory
	In       string
	Output   string
	Key      string
	Slot     int
	PassFile string
}

func newCmdBundleSign(f *Factory) *cobra.Command {
	o := &BundleSignOptions{F: f}
	cmd := &cobra.Command{
		Use:   "sign IN.ZIP --key KEY.pem [--slot N] -o OUT.ZIP",
		Short: "Add or replace a signature of a bundle, without touching its manifest",
		Long: `Sign an existing bundle (yours, or one 'mos build' made) with an ECDSA P-256
key: the signature of manifest.json's exact bytes goes into slot N (sigN, which
a device checks with its update.keyN) of the signature field, where
'mos create-fw-bundle --sign-key' puts it. Other signatures stay; one already
in slot N is replaced. Nothing else changes: manifest, parts and checksums
are the same bytes (mos create-fw-bundle -i would rewrite the manifest).
-o may name IN.ZIP itself: it is replaced once the signed bundle is complete.
An encrypted key asks for its passphrase on the terminal, or reads it from
the first line of --key-pass-file.`,
		Example: `  otactl bundle sign build/fw.zip --key k0.pem -o build/fw-signed.zip
  # add key 1's signature for devices that rotated to it
  otactl bundle sign build/fw-signed.zip --key k1.pem --slot 1 -o build/fw-signed.zip`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageErrorf("bundle sign takes one bundle file")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			o.In = args[0]
			return runBundleSign(o)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&o.Key, "key", "", "ECDSA P-256 private key (PEM) to sign with (required)")
	fl.IntVar(&o.Slot, "slot", 0, "signature slot 0-7: the device checks sigN with its update.keyN")
	fl.StringVarP(&o.Output, "output", "o", "", "signed bundle to write (required; may be IN.ZIP)")
	fl.StringVar(&o.PassFile, "key-pass-file", "", "file whose first line is the passphrase of an encrypted --key (default: ask on the terminal)")
	return cmd
}

func runBundleSign(o *BundleSignOptions) error {
	var missing []string
	if o.Key == "" {
		missing = append(missing, "--key KEY.pem")
	}
	if o.Output == "" {
		missing = append(missing, "-o OUT.ZIP")
	}
	if len(missing) > 0 {
		return usageErrorf("bundle sign needs %s", strings.Join(missing, " and "))
	}
	if o.Slot < 0 || o.Slot >= bundle.MaxKeys {
		return usageErrorf("--slot %d: a device has key slots 0 to %d", o.Slot, bundle.MaxKeys-1)
	}
	fh, err := openBundle(o.In)
	if err != nil {
		return err
	}
	rep, err := bundle.Verify(fh)
	fh.Close()
	if err != nil {
		return &ExitError{Code: ExitFailure, Err: fmt.Errorf("%s failed verification, not signing it: %w", o.In, err)}
	}
	signers, err := loadSigners("--key", []string{strconv.Itoa(o.Slot) + ":" + o.Key}, o.F.passphrase("--key-pass-file", o.PassFile))
	if err != nil {
		return err
	}
	key := signers[o.Slot]
	sigs, err := bundle.SignFile(o.In, o.Output, o.Slot, key)
	if err != nil {
		return fmt.Errorf("signing %s: %w", o.In, err)
	}
	// Read the result back as a device would and check the new signature.
	p := &bundle.SignaturePolicy{ReqMask: 1 << o.Slot}
	p.Keys[o.Slot] = key.Public().(*ecdsa.PublicKey)
	out, err := bundle.VerifyFile(o.Output)
	if err == nil {
		_, err = p.Check(out.RawManifest, out.Signatures)
	}
	if err != nil {
		return fmt.Errorf("the signed bundle %s does not check out: %w", o.Output, err)
	}
	if o.F.G.JSON {
		return writeJSON(o.F.IO.Out, map[string]any{"file": o.Output, "slot": o.Slot, "signatures": nonNilInts(sigs.Slots()),
			"version": rep.Manifest.Version, "build_id": rep.Manifest.BuildID})
	}
	fmt.Fprintf(o.F.IO.Out, "wrote %s: %s %s signed in slot %d; signatures now %s (manifest unchanged)\n",
		o.Output, rep.Manifest.Name, rep.Manifest.Version, o.Slot, sigNames(sigs.Slots()))
	return nil
}

func nonNilInts(s []int) []int {
	if s == nil {
		return []int{}
	}
	return s
}
