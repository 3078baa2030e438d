package bundle

import (
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"io"
	"os"
)

// EntryInfo describes one archive entry after manifest.json.
type EntryInfo struct {
	Name   string
	Size   int64
	CRC32  uint32
	SHA1   string
	SHA256 string
	// Part is the name of the part whose src is this entry, or "" when
	// no part names it (a device skips such entries).
	Part string
}

// Report is what Inspect found in a bundle.
type Report struct {
	Manifest    *Manifest
	RawManifest []byte
	// Signatures is the raw extra field 0x293a of manifest.json, or nil.
	Signatures []byte
	Entries    []EntryInfo
	// Problems lists part checks that failed (missing data, size or
	// digest mismatch); Verify turns the first into an error.
	Problems []error
	// Size is the number of bytes read up to the central directory.
	Size int64
}

// Inspect reads a whole bundle as a device would (stream, manifest first,
// stored entries, CRC-32 of each) and computes every entry's size and
// digests. Format errors are returned as errors; part-level problems are
// listed in Report.Problems.
func Inspect(r io.Reader) (*Report, error) {
	rd, err := NewReader(r)
	if err != nil {
		return nil, err
	}
	m := rd.Manifest()
	rep := &Report{Manifest: m, RawManifest: rd.RawManifest(), Signatures: rd.Signatures()}
	bySrc := m.DataParts() // part names and srcs were checked by NewReader
	seen := map[string]bool{}
	for {
		e, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		c, h1, h256 := crc32.NewIEEE(), sha1.New(), sha256.New()
		n, err := io.Copy(io.MultiWriter(c, h1, h256), e)
		if err != nil {
			return nil, err
		}
		info := EntryInfo{Name: e.Name, Size: n, CRC32: c.Sum32(),
			SHA1: hex.EncodeToString(h1.Sum(nil)), SHA256: hex.EncodeToString(h256.Sum(nil))}
		if part, ok := bySrc[e.BaseName()]; ok && !seen[part] {
			info.Part = part
			seen[part] = true
			if err := CheckPart(part, m.Parts[part], n, info.SHA1, info.SHA256); err != nil {
				rep.Problems = append(rep.Problems, err)
			}
			if e.Descriptor {
				rep.Problems = append(rep.Problems, DescriptorError(e))
			}
		}
		rep.Entries = append(rep.Entries, info)
	}
	for _, name := range m.PartNames() {
		p := m.Parts[name]
		if p != nil && p.Src != "" && !seen[name] {
			rep.Problems = append(rep.Problems, &Error{Msg: ErrMissingPart.Msg, Detail: fmt.Sprintf("part %q: no entry %q in the archive", name, p.Src)})
		}
	}
	rep.Size = rd.Offset()
	return rep, nil
}

// DescriptorError is the error a device reports for a part entry e that
// is followed by a data descriptor (see Entry.Descriptor).
func DescriptorError(e *Entry) error {
	return &Error{Msg: ErrBadHeader.Msg, Detail: fmt.Sprintf("entry %q is followed by a data descriptor, which a device cannot stream past after a part it writes: write the bundle without data descriptors (otactl bundle create does)", e.Name)}
}

// CheckPart compares a part's data (its size and hex digests) with the
// manifest: size and cs_sha256 when present, cs_sha1 when present.
func CheckPart(name string, p *Part, size int64, sha1Hex, sha256Hex string) error {
	if p.Size != nil && *p.Size != size {
		return &Error{Msg: ErrSize.Msg, Detail: fmt.Sprintf("part %q: manifest says %d bytes, data is %d", name, *p.Size, size)}
	}
	if p.CSSHA1 != "" && !hexEqual(p.CSSHA1, sha1Hex) {
		return &Error{Msg: ErrDigest.Msg, Detail: fmt.Sprintf("part %q: cs_sha1 %s, data has %s", name, p.CSSHA1, sha1Hex)}
	}
	if p.CSSHA256 != "" && !hexEqual(p.CSSHA256, sha256Hex) {
		return &Error{Msg: ErrDigest.Msg, Detail: fmt.Sprintf("part %q: cs_sha256 %s, data has %s", name, p.CSSHA256, sha256Hex)}
	}
	return nil
}

func hexEqual(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i]|0x20, b[i]|0x20
		if x != y {
			return false
		}
	}
	return true
}

// Verify is Inspect that also fails on the first part problem.
func Verify(r io.Reader) (*Report, error) {
	rep, err := Inspect(r)
	if err != nil {
		return nil, err
	}
	if len(rep.Problems) > 0 {
		return rep, rep.Problems[0]
	}
	return rep, nil
}

// VerifyFile is Verify of the bundle file at path.
func VerifyFile(path string) (*Report, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening bundle: %w", err)
	}
	defer f.Close()
	rep, err := Verify(f)
	if err != nil {
		return rep, fmt.Errorf("bundle %s: %w", path, err)
	}
	return rep, nil
}
