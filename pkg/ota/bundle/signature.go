package bundle

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
)

// Signed bundles (docs/security.md). A bundle carries up to MaxKeys
// signatures of its manifest: sigN is ECDSA P-256 over the SHA-256 of the
// exact bytes of manifest.json as stored, ASN.1 DER encoded, then standard
// base64. They sit in one JSON object, {"sig0": "...", "sig2": "..."}, in
// the extra field with id SignatureExtraID of manifest.json's local header
// (and, as mos writes it, of its central directory header too). A device
// holds the public keys update.key0..key7 and update.sig_req_mask.

// MaxKeys is the number of key slots of a device (update.key0..key7).
const MaxKeys = 8

// ErrSignature is the status a device (the emulator) reports when a bundle
// lacks a signature that its update.sig_req_mask requires, or carries one
// that does not verify. The device's own code for this check is not public
// (it was added to ota-common after the library was closed), so this text
// is the emulator's; docs/security.md says so.
var ErrSignature = &Error{Msg: "Signature check failed"}

// Signatures is the content of the extra field 0x293a.
type Signatures struct {
	// Sig holds the raw (DER) signature for each key slot; nil where
	// there is none.
	Sig [MaxKeys][]byte
	// Bad lists the sigN keys (N < MaxKeys) whose value is not a base64
	// string: a device cannot verify them.
	Bad []string
	// Other keeps every other member of the object (mos puts the values of
	// create-fw-bundle --extra-attr there), as raw JSON.
	Other map[string]json.RawMessage
}

// ParseSignatures parses the data of the extra field 0x293a. Empty data
// gives empty Signatures. Data that is not a JSON object is an error.
func ParseSignatures(data []byte) (*Signatures, error) {
	s := &Signatures{}
	if len(bytes.TrimSpace(data)) == 0 {
		return s, nil
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil || raw == nil {
		return s, fmt.Errorf("the signature field of manifest.json is not a JSON object (%.60q)", data)
	}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := raw[k]
		slot, ok := sigSlot(k)
		if !ok {
			if s.Other == nil {
				s.Other = map[string]json.RawMessage{}
			}
			s.Other[k] = v
			continue
		}
		var b64 string
		if err := json.Unmarshal(v, &b64); err != nil {
			s.Bad = append(s.Bad, k)
			continue
		}
		der, err := base64.StdEncoding.DecodeString(b64)
		if err != nil || len(der) == 0 {
			s.Bad = append(s.Bad, k)
			continue
		}
		s.Sig[slot] = der
	}
	return s, nil
}

// sigSlot returns N for the key "sigN" with 0 <= N < MaxKeys.
func sigSlot(k string) (int, bool) {
	rest, ok := strings.CutPrefix(k, "sig")
	if !ok || len(rest) != 1 || rest[0] < '0' || rest[0] >= '0'+MaxKeys {
		return 0, false
	}
	return int(rest[0] - '0'), true
}

// Slots returns the slots that hold a signature, in order.
func (s *Signatures) Slots() []int {
	var out []int
	for i, sig := range s.Sig {
		if sig != nil {
			out = append(out, i)
		}
	}
	return out
}

// Empty reports whether s holds nothing to write.
func (s *Signatures) Empty() bool {
	return len(s.Slots()) == 0 && len(s.Other) == 0
}

// Marshal encodes s the way mos does (encoding/json of a map): one compact
// JSON object, keys in sorted order, signatures as standard base64.
func (s *Signatures) Marshal() []byte {
	m := make(map[string]any, MaxKeys+len(s.Other))
	for k, v := range s.Other {
		m[k] = v
	}
	for i, sig := range s.Sig {
		if sig != nil {
			m["sig"+strconv.Itoa(i)] = base64.StdEncoding.EncodeToString(sig)
		}
	}
	b, err := json.Marshal(m)
	if err != nil { // Other holds only JSON that was parsed
		panic(err)
	}
	return b
}

// SignatureExtraField returns a whole zip extra field record: the id
// 0x293a and the length, little-endian, then data.
func SignatureExtraField(data []byte) ([]byte, error) {
	if len(data) > 0xffff-4 {
		return nil, fmt.Errorf("bundle signatures are %d bytes, too many for a zip extra field", len(data))
	}
	f := binary.LittleEndian.AppendUint16(nil, SignatureExtraID)
	f = binary.LittleEndian.AppendUint16(f, uint16(len(data)))
	return append(f, data...), nil
}

// replaceExtra returns extra with the field id removed and, when field is
// not nil, the whole record field added after the well-formed records.
// Malformed trailing bytes (a record shorter than its length says, or
// fewer than 4 bytes) are kept after it: a reader stops at them, so the
// field must come first to be found.
func replaceExtra(extra []byte, id uint16, field []byte) []byte {
	var out []byte
	rest := extra
	for len(rest) >= 4 {
		fid := binary.LittleEndian.Uint16(rest)
		n := int(binary.LittleEndian.Uint16(rest[2:]))
		if 4+n > len(rest) {
			break
		}
		if fid != id {
			out = append(out, rest[:4+n]...)
		}
		rest = rest[4+n:]
	}
	out = append(out, field...)
	return append(out, rest...)
}

// SignManifest signs the manifest bytes with key (an ECDSA P-256 private
// key or any crypto.Signer holding one) and returns the DER signature.
func SignManifest(manifest []byte, key crypto.Signer) ([]byte, error) {
	if err := checkP256(key.Public()); err != nil {
		return nil, err
	}
	d := sha256.Sum256(manifest)
	return key.Sign(rand.Reader, d[:], crypto.SHA256)
}

// VerifyManifest reports whether sig (DER) is a valid signature of the
// manifest bytes by pub.
func VerifyManifest(manifest, sig []byte, pub *ecdsa.PublicKey) bool {
	if pub == nil || len(sig) == 0 {
		return false
	}
	d := sha256.Sum256(manifest)
	return ecdsa.VerifyASN1(pub, d[:], sig)
}

func checkP256(pub crypto.PublicKey) error {
	k, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return fmt.Errorf("not an ECDSA key (%T): devices verify ECDSA P-256 signatures only", pub)
	}
	if k.Curve != elliptic.P256() {
		return fmt.Errorf("ECDSA key on curve %s: devices verify P-256 (prime256v1) signatures only", k.Curve.Params().Name)
	}
	return nil
}

// SignaturePolicy is a device's signature configuration.
type SignaturePolicy struct {
	// Keys are update.key0..key7; nil where the device has no key.
	Keys [MaxKeys]*ecdsa.PublicKey
	// ReqMask is update.sig_req_mask: below 0 the device ignores
	// signatures (its default, -1); 0 refuses every update; above 0 every
	// bit set must be matched by a signature that verifies with the key of
	// that slot (bit N = key N).
	ReqMask int
}

// SigCheck is the result of checking a bundle's signatures.
type SigCheck struct {
	// Verified has bit N set when sigN verifies with key N (the device's
	// sig_check_result).
	Verified uint8
	// Present has bit N set when the bundle carries sigN.
	Present uint8
}

// Verify checks the signatures in field (the data of the extra field
// 0x293a) of the manifest bytes against p's keys.
func (p *SignaturePolicy) Verify(manifest, field []byte) SigCheck {
	var c SigCheck
	sigs, err := ParseSignatures(field)
	if err != nil {
		return c
	}
	for i := range MaxKeys {
		if sigs.Sig[i] == nil {
			continue
		}
		c.Present |= 1 << i
		if VerifyManifest(manifest, sigs.Sig[i], p.Keys[i]) {
			c.Verified |= 1 << i
		}
	}
	return c
}

// Check applies the device's rule: nil when the bundle may be applied, an
// error with the status ErrSignature (and a detail that says which slots
// failed) when the device refuses it.
func (p *SignaturePolicy) Check(manifest, field []byte) (SigCheck, error) {
	c := p.Verify(manifest, field)
	return c, p.Judge(c)
}

// Judge applies the device's rule to a check's result.
func (p *SignaturePolicy) Judge(c SigCheck) error {
	switch {
	case p.ReqMask < 0:
		return nil
	case p.ReqMask == 0:
		return &Error{Msg: ErrSignature.Msg, Detail: "update.sig_req_mask is 0: the device accepts no update"}
	}
	missing := uint64(p.ReqMask) &^ uint64(c.Verified)
	if missing == 0 {
		return nil
	}
	var why []string
	for i := 0; i < 64; i++ {
		if missing&(1<<i) == 0 {
			continue
		}
		switch {
		case i >= MaxKeys:
			why = append(why, fmt.Sprintf("bit %d is set but a device has only %d keys", i, MaxKeys))
		case p.Keys[i] == nil:
			why = append(why, fmt.Sprintf("key%d is required but not configured", i))
		case c.Present&(1<<i) == 0:
			why = append(why, fmt.Sprintf("sig%d is required but missing", i))
		default:
			why = append(why, fmt.Sprintf("sig%d does not verify with key%d", i, i))
		}
	}
	return &Error{Msg: ErrSignature.Msg, Detail: fmt.Sprintf("update.sig_req_mask %#x, verified %#x: %s", p.ReqMask, c.Verified, strings.Join(why, "; "))}
}

// MaskOf returns the mask with a bit set for each non-nil key.
func MaskOf(keys [MaxKeys]*ecdsa.PublicKey) int {
	m := 0
	for i, k := range keys {
		if k != nil {
			m |= 1 << i
		}
	}
	return m
}

// ReadSignatures reads the manifest of the bundle in r (as a device does,
// from the start of the stream) and returns its bytes and its signature
// field (nil when unsigned).
func ReadSignatures(r io.Reader) (manifest, field []byte, err error) {
	rd, err := NewReader(r)
	if err != nil {
		return nil, nil, err
	}
	return rd.RawManifest(), rd.Signatures(), nil
}

// errNoSigners is returned by SignBundle when there is nothing to do.
var errNoSigners = errors.New("no signing key given")
