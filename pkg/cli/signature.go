package cli

import (
	"fmt"

	"github.com/spf13/pflag"

	"github.com/otactl/otactl/pkg/ota/bundle"
)

// Checking a bundle's signatures before `update --file` and `push` send it
// (docs/security.md): with --pubkey, otactl applies the device's rule
// itself and refuses, before anything is sent, a bundle the device would
// refuse.

// sigCheckFlags are the signature flags of update and push.
type sigCheckFlags struct {
	PubKeys []string
	Mask    string
}

func (s *sigCheckFlags) add(fl *pflag.FlagSet) {
	fl.StringArrayVar(&s.PubKeys, "pubkey", nil, "[N:]PUB.pem or base64 key: the device's update.keyN (repeatable; the Nth is key N unless N: is given); refuse, before sending, a bundle the device would refuse")
	fl.StringVar(&s.Mask, "sig-req-mask", "", "with --pubkey: the device's update.sig_req_mask (default: every key given must verify)")
}

// ReasonBadSignature is the --json reason of a bundle refused for its
// signatures.
const ReasonBadSignature = "bad_signature"

// reasonError gives an error a stable code for the --json error document
// ("reason", docs/exit-codes.md).
type reasonError struct {
	reason string
	err    error
}

func (e *reasonError) Error() string  { return e.err.Error() }
func (e *reasonError) Unwrap() error  { return e.err }
func (e *reasonError) Reason() string { return e.reason }

// checkSignatures applies --pubkey and --sig-req-mask to the bundle of
// rep (read from path). Without --pubkey it checks nothing.
func (s *sigCheckFlags) checkSignatures(path string, rep *bundle.Report) error {
	if len(s.PubKeys) == 0 {
		if s.Mask != "" {
			return usageErrorf("--sig-req-mask goes with --pubkey: give the device's keys")
		}
		return nil
	}
	if rep == nil {
		return usageErrorf("--pubkey checks a local bundle (update --file, push); check a bundle you publish at a URL with 'otactl bundle verify --pubkey' before publishing it")
	}
	p, _, err := policyFromFlags("--pubkey", s.PubKeys, "--sig-req-mask", s.Mask)
	if err != nil {
		return err
	}
	c, err := p.Check(rep.RawManifest, rep.Signatures)
	if err != nil {
		return &ExitError{Code: ExitUpdate, Err: &reasonError{reason: ReasonBadSignature, err: fmt.Errorf(
			"%s would be refused by the device, nothing was sent: %w (%s)", path, err, signatureHint(path, p, c))}}
	}
	return nil
}

// signatureHint says what to do about a bundle that fails a signature
// check.
func signatureHint(path string, p *bundle.SignaturePolicy, c bundle.SigCheck) string {
	if p.ReqMask == 0 {
		return "a device with update.sig_req_mask 0 takes no update at all"
	}
	if bad := c.Present &^ c.Verified & uint8(p.ReqMask); bad != 0 {
		return fmt.Sprintf("a signature that does not verify was made with another key, or the bundle changed after signing: see 'otactl bundle verify %s --pubkey ...'", path)
	}
	return fmt.Sprintf("sign it with 'otactl bundle sign %s --key KEY.pem --slot N -o OUT.zip' for each missing slot", path)
}

// policyFromFlags builds the device's signature policy from key and mask
// flags (the mask defaults to every key given) and says where each key
// came from.
func policyFromFlags(keyFlag string, keys []string, maskFlag, mask string) (*bundle.SignaturePolicy, [bundle.MaxKeys]string, error) {
	p := &bundle.SignaturePolicy{}
	var err error
	var names [bundle.MaxKeys]string
	p.Keys, names, err = loadPublicKeys(keyFlag, keys)
	if err != nil {
		return nil, names, err
	}
	p.ReqMask = bundle.MaskOf(p.Keys)
	if mask != "" {
		if p.ReqMask, err = parseMask(maskFlag, mask); err != nil {
			return nil, names, err
		}
	}
	return p, names, nil
}
