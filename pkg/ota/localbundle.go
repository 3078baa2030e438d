package ota

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/otactl/otactl/pkg/ota/bundle"
)

// LocalBundle is a bundle file on this machine, checked once (its
// manifest, sizes and digests, as a device would check them) and then
// shared by any number of updates at once: it is read with ReadAt, which is
// safe for concurrent use, so serving or pushing it to many devices needs
// one open file and no copy in memory.
type LocalBundle struct {
	// Path is the file's path as given.
	Path string
	// Size is its size in bytes.
	Size int64
	// Report is what bundle.Inspect found (manifest, raw manifest,
	// signatures).
	Report *bundle.Report

	f *os.File
}

// OpenBundle opens and checks a bundle file. A path that does not exist is
// a usage error (ReasonUsage, exit 2); a file that is not a valid bundle,
// or is corrupt, ReasonCorruptBundle (exit 6): nothing is sent then.
func OpenBundle(path string) (*LocalBundle, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, WithReason(ReasonUsage, fmt.Errorf("bundle %s does not exist", path))
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read bundle: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("cannot read bundle: %w", err)
	}
	rep, err := bundle.Inspect(io.NewSectionReader(f, 0, st.Size()))
	if err != nil {
		f.Close()
		return nil, WithReason(ReasonCorruptBundle, fmt.Errorf("%s is not a valid bundle, nothing was sent: %w", path, err))
	}
	if len(rep.Problems) > 0 {
		f.Close()
		return nil, WithReason(ReasonCorruptBundle, fmt.Errorf("%s is corrupt, nothing was sent: %w (check with 'otactl bundle verify')", path, rep.Problems[0]))
	}
	return &LocalBundle{Path: path, Size: st.Size(), Report: rep, f: f}, nil
}

// ReadAt reads the bundle's bytes at off (io.ReaderAt; safe for
// concurrent use).
func (b *LocalBundle) ReadAt(p []byte, off int64) (int, error) { return b.f.ReadAt(p, off) }

// Manifest is the bundle's manifest.
func (b *LocalBundle) Manifest() *bundle.Manifest { return b.Report.Manifest }

// Firmware is the firmware the bundle installs (its manifest's version and
// build_id).
func (b *LocalBundle) Firmware() Firmware {
	m := b.Report.Manifest
	return Firmware{Version: m.Version, BuildID: m.BuildID}
}

// CheckSignatures applies a device's signature policy (its update.keyN and
// update.sig_req_mask) to the bundle, as the device will: an error
// (ReasonBadSignature, exit 6) says the device would refuse it, and what to
// do. A nil policy checks nothing.
func (b *LocalBundle) CheckSignatures(p *bundle.SignaturePolicy) error {
	if p == nil {
		return nil
	}
	c, err := p.Check(b.Report.RawManifest, b.Report.Signatures)
	if err != nil {
		return WithReason(ReasonBadSignature, fmt.Errorf(
			"%s would be refused by the device, nothing was sent: %w (%s)", b.Path, err, signatureHint(b.Path, p, c)))
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

// Close closes the file. Updates still using the bundle fail to read it.
func (b *LocalBundle) Close() error { return b.f.Close() }
