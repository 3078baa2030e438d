package emulator

import (
	"fmt"

	"github.com/otactl/otactl/pkg/ota/bundle"
)

// checkSignatures applies the device's update.key0..key7 and
// update.sig_req_mask (Config.Signing) to the bundle being read. A device
// checks them once it has read manifest.json, before its updater begins
// writing to the spare slot, so a refused bundle leaves that slot as it
// was (docs/security.md). It returns an error with the status message
// bundle.ErrSignature when the bundle must be refused.
func (d *Device) checkSignatures(br *bundle.Reader) error {
	p := d.cfg.Signing
	if p == nil || p.ReqMask < 0 {
		return nil
	}
	c, err := p.Check(br.RawManifest(), br.Signatures())
	d.log.Info("signature check", "present", fmt.Sprintf("%#x", c.Present), "verified", fmt.Sprintf("%#x", c.Verified),
		"sig_req_mask", fmt.Sprintf("%#x", p.ReqMask))
	if err != nil {
		d.log.Error(err.Error())
		return err
	}
	return nil
}
