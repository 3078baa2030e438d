package bundle

import (
	"bytes"
	"crypto"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"sort"
	"strings"
	"time"
)

// PartData supplies the data of one part to Create. Open is called twice
// (once to compute size and digests, once to write), so that a bundle of
// any size is written without holding a part in memory.
type PartData struct {
	// Name is the part name (the key in the manifest's parts).
	Name string
	// Part is the part description. Src defaults to Name; Size, CSSHA1
	// and CSSHA256 are computed by Create.
	Part Part
	// Open returns the part's data from the start.
	Open func() (io.ReadCloser, error)
}

// FileData returns a PartData reading the file at path.
func FileData(name string, part Part, path string) PartData {
	return PartData{Name: name, Part: part, Open: func() (io.ReadCloser, error) { return os.Open(path) }}
}

// BytesData returns a PartData holding b.
func BytesData(name string, part Part, b []byte) PartData {
	return PartData{Name: name, Part: part, Open: func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}}
}

// CreateOptions tune Create. The zero value is fine.
type CreateOptions struct {
	// Time stamps the entries and fills an empty build_timestamp
	// (default: now).
	Time time.Time
	// Signatures, when set, is stored as the extra field 0x293a of
	// manifest.json (JSON {"sig0": "<base64>", ...}) as it is.
	Signatures []byte
	// Signers, when set, sign the manifest: Signers[N] makes sigN (nil
	// entries are skipped, as mos skips an empty --sign-key). Their
	// signatures join those in Signatures.
	Signers []crypto.Signer
}

// ValidSrc reports ErrBadSrc unless src is a flat file name: no path
// separator, not "." or "..", no "..".
func ValidSrc(src string) error {
	if src == "" || strings.ContainsAny(src, `/\`) || strings.Contains(src, "..") || src == "." {
		return &Error{Msg: ErrBadSrc.Msg, Detail: fmt.Sprintf("%q is not a flat file name", src)}
	}
	return nil
}

// ValidPartName reports ErrBadPartName unless name (a key of the
// manifest's parts) is a flat file name, by the rules of ValidSrc.
func ValidPartName(name string) error {
	if ValidSrc(name) != nil {
		return &Error{Msg: ErrBadPartName.Msg, Detail: fmt.Sprintf("%q is not a flat file name", name)}
	}
	return nil
}

type centralRec struct {
	name   string
	crc    uint32
	size   uint32
	offset uint32
	extra  []byte
}

// Create writes a bundle to w: manifest.json first (indented JSON, with
// size, cs_sha1 and cs_sha256 filled in for every part that has data, and
// build_timestamp), then one stored entry per part under its flat src
// name, then the central directory. m is updated in place. Parts already in
// m.Parts that have no PartData must not have a src.
func Create(w io.Writer, m *Manifest, parts []PartData, opts *CreateOptions) error {
	var o CreateOptions
	if opts != nil {
		o = *opts
	}
	if o.Time.IsZero() {
		o.Time = time.Now()
	}
	if m.Parts == nil {
		m.Parts = map[string]*Part{}
	}
	if m.BuildTimestamp == "" {
		m.BuildTimestamp = o.Time.UTC().Format(time.RFC3339)
	}
	srcs := map[string]string{}
	data := map[string]PartData{}
	for _, pd := range parts {
		if pd.Name == "" || pd.Open == nil {
			return fmt.Errorf("bundle part %q: name and Open are required", pd.Name)
		}
		if err := ValidPartName(pd.Name); err != nil {
			return fmt.Errorf("bundle part: %w", err)
		}
		if _, dup := data[pd.Name]; dup {
			return fmt.Errorf("bundle part %q given twice", pd.Name)
		}
		p := pd.Part
		if p.Src == "" {
			p.Src = pd.Name
		}
		if err := ValidSrc(p.Src); err != nil {
			return fmt.Errorf("bundle part %q: %w", pd.Name, err)
		}
		if len(p.Src) > MaxDeviceNameLen {
			return fmt.Errorf("bundle part %q: src %q is longer than the %d bytes a device takes: %w", pd.Name, p.Src, MaxDeviceNameLen, ErrFileName)
		}
		if p.Src == ManifestName {
			return fmt.Errorf("bundle part %q: src %q is reserved", pd.Name, p.Src)
		}
		if other, dup := srcs[p.Src]; dup {
			return fmt.Errorf("bundle parts %q and %q have the same src %q", other, pd.Name, p.Src)
		}
		srcs[p.Src] = pd.Name
		size, _, s1, s256, err := digest(pd)
		if err != nil {
			return err
		}
		p.Size = Int64(size)
		p.CSSHA1 = s1
		p.CSSHA256 = s256
		m.Parts[pd.Name] = &p
		data[pd.Name] = pd
	}
	for name, p := range m.Parts {
		if _, ok := data[name]; !ok && p.Src != "" {
			return fmt.Errorf("bundle part %q names src %q but no data was given for it", name, p.Src)
		}
	}
	if err := m.Validate(); err != nil {
		return fmt.Errorf("bundle manifest: %w (set platform, version, build_id and at least one part)", err)
	}
	man, err := m.Indented()
	if err != nil {
		return fmt.Errorf("bundle manifest: %w", err)
	}
	cw := &countWriter{w: w}
	dt, dd := dosTime(o.Time)
	var recs []centralRec
	sigData, err := signatureData(man, o.Signatures, o.Signers)
	if err != nil {
		return err
	}
	var extra []byte
	if len(sigData) > 0 {
		if extra, err = SignatureExtraField(sigData); err != nil {
			return err
		}
	}
	writeEntry := func(name string, crc uint32, size int64, extra []byte, body func() error) error {
		if size > 0xfffffffe || cw.n > 0xfffffffe {
			return fmt.Errorf("bundle too large for a zip without zip64 (entry %q)", name)
		}
		// mos writes the same extra field in the central directory.
		recs = append(recs, centralRec{name: name, crc: crc, size: uint32(size), offset: uint32(cw.n), extra: extra})
		h := make([]byte, 0, localHeaderLen+len(name)+len(extra))
		h = binary.LittleEndian.AppendUint32(h, sigLocal)
		h = binary.LittleEndian.AppendUint16(h, 10) // version needed: 1.0 (stored)
		h = binary.LittleEndian.AppendUint16(h, 0)  // flags
		h = binary.LittleEndian.AppendUint16(h, 0)  // stored
		h = binary.LittleEndian.AppendUint16(h, dt)
		h = binary.LittleEndian.AppendUint16(h, dd)
		h = binary.LittleEndian.AppendUint32(h, crc)
		h = binary.LittleEndian.AppendUint32(h, uint32(size))
		h = binary.LittleEndian.AppendUint32(h, uint32(size))
		h = binary.LittleEndian.AppendUint16(h, uint16(len(name)))
		h = binary.LittleEndian.AppendUint16(h, uint16(len(extra)))
		h = append(h, name...)
		h = append(h, extra...)
		if _, err := cw.Write(h); err != nil {
			return err
		}
		return body()
	}
	if err := writeEntry(ManifestName, crc32.ChecksumIEEE(man), int64(len(man)), extra, func() error {
		_, err := cw.Write(man)
		return err
	}); err != nil {
		return fmt.Errorf("writing bundle: %w", err)
	}
	names := make([]string, 0, len(data))
	for n := range data {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		pd := data[n]
		p := m.Parts[n]
		size, crc, _, _, err := digest(pd)
		if err != nil {
			return err
		}
		if size != *p.Size {
			return fmt.Errorf("bundle part %q changed while being written (size %d, then %d)", n, *p.Size, size)
		}
		err = writeEntry(p.Src, crc, size, nil, func() error {
			rc, err := pd.Open()
			if err != nil {
				return err
			}
			defer rc.Close()
			h := crc32.NewIEEE()
			k, err := io.Copy(cw, io.TeeReader(rc, h))
			if err != nil {
				return err
			}
			if k != size || h.Sum32() != crc {
				return fmt.Errorf("part %q changed while being written", n)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("writing bundle part %q: %w", n, err)
		}
	}
	// Central directory.
	cdStart := cw.n
	for _, r := range recs {
		h := make([]byte, 0, 46+len(r.name)+len(r.extra))
		h = binary.LittleEndian.AppendUint32(h, sigCentral)
		h = binary.LittleEndian.AppendUint16(h, 3<<8|20) // made by: unix, 2.0
		h = binary.LittleEndian.AppendUint16(h, 10)
		h = binary.LittleEndian.AppendUint16(h, 0)
		h = binary.LittleEndian.AppendUint16(h, 0)
		h = binary.LittleEndian.AppendUint16(h, dt)
		h = binary.LittleEndian.AppendUint16(h, dd)
		h = binary.LittleEndian.AppendUint32(h, r.crc)
		h = binary.LittleEndian.AppendUint32(h, r.size)
		h = binary.LittleEndian.AppendUint32(h, r.size)
		h = binary.LittleEndian.AppendUint16(h, uint16(len(r.name)))
		h = binary.LittleEndian.AppendUint16(h, uint16(len(r.extra)))
		h = binary.LittleEndian.AppendUint16(h, 0) // comment
		h = binary.LittleEndian.AppendUint16(h, 0) // disk
		h = binary.LittleEndian.AppendUint16(h, 0) // internal attrs
		h = binary.LittleEndian.AppendUint32(h, 0o100644<<16)
		h = binary.LittleEndian.AppendUint32(h, r.offset)
		h = append(h, r.name...)
		h = append(h, r.extra...)
		if _, err := cw.Write(h); err != nil {
			return fmt.Errorf("writing bundle: %w", err)
		}
	}
	cdSize := cw.n - cdStart
	if cdStart > 0xfffffffe {
		return errors.New("bundle too large for a zip without zip64")
	}
	h := make([]byte, 0, 22)
	h = binary.LittleEndian.AppendUint32(h, sigEnd)
	h = binary.LittleEndian.AppendUint16(h, 0)
	h = binary.LittleEndian.AppendUint16(h, 0)
	h = binary.LittleEndian.AppendUint16(h, uint16(len(recs)))
	h = binary.LittleEndian.AppendUint16(h, uint16(len(recs)))
	h = binary.LittleEndian.AppendUint32(h, uint32(cdSize))
	h = binary.LittleEndian.AppendUint32(h, uint32(cdStart))
	h = binary.LittleEndian.AppendUint16(h, 0)
	if _, err := cw.Write(h); err != nil {
		return fmt.Errorf("writing bundle: %w", err)
	}
	return nil
}

// CreateFile is Create into a new file at path (written to a temporary
// file first, then renamed).
func CreateFile(path string, m *Manifest, parts []PartData, opts *CreateOptions) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("creating bundle: %w", err)
	}
	if err := Create(f, m, parts, opts); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("creating bundle: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("creating bundle: %w", err)
	}
	return nil
}

// signatureData returns the content of the signature extra field for the
// manifest bytes man: the signatures given as JSON (raw) with those made
// by signers added (replacing any of the same slot).
func signatureData(man, raw []byte, signers []crypto.Signer) ([]byte, error) {
	if len(signers) == 0 {
		return raw, nil
	}
	if len(signers) > MaxKeys {
		return nil, fmt.Errorf("%d signing keys: a device has only %d key slots", len(signers), MaxKeys)
	}
	sigs, err := ParseSignatures(raw)
	if err != nil {
		return nil, err
	}
	for i, s := range signers {
		if s == nil {
			continue
		}
		sig, err := SignManifest(man, s)
		if err != nil {
			return nil, fmt.Errorf("signing the manifest with key %d: %w", i, err)
		}
		sigs.Sig[i] = sig
	}
	return sigs.Marshal(), nil
}

func digest(pd PartData) (size int64, crc uint32, s1, s256 string, err error) {
	rc, err := pd.Open()
	if err != nil {
		return 0, 0, "", "", fmt.Errorf("bundle part %q: %w", pd.Name, err)
	}
	defer rc.Close()
	c, h1, h256 := crc32.NewIEEE(), sha1.New(), sha256.New()
	size, err = io.Copy(io.MultiWriter(c, h1, h256), rc)
	if err != nil {
		return 0, 0, "", "", fmt.Errorf("bundle part %q: %w", pd.Name, err)
	}
	return size, c.Sum32(), hex.EncodeToString(h1.Sum(nil)), hex.EncodeToString(h256.Sum(nil)), nil
}

func dosTime(t time.Time) (tm, date uint16) {
	t = t.UTC()
	if t.Year() < 1980 {
		t = time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	tm = uint16(t.Hour()<<11 | t.Minute()<<5 | t.Second()/2)
	date = uint16((t.Year()-1980)<<9 | int(t.Month())<<5 | t.Day())
	return tm, date
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
