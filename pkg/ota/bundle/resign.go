package bundle

import (
	"bytes"
	"crypto"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
)

const (
	centralHeaderLen = 46
	endRecordLen     = 22
)

// RewriteSignatures copies the bundle in (size bytes) to w with the
// signature field of manifest.json replaced by what edit makes of it. The
// manifest's bytes, every entry's data and every other header field stay
// as they are; the local header of manifest.json grows or shrinks, so the
// offsets of the later entries, of the central directory and in it move
// by as much. The new field goes into manifest.json's central directory
// header too, as mos writes it. edit gets the manifest bytes (what a
// signature covers) and the signatures found in the local header.
//
// The bundle must start with a stored manifest.json without a data
// descriptor (what a device takes) and must not use zip64.
func RewriteSignatures(in io.ReaderAt, size int64, w io.Writer, edit func(manifest []byte, s *Signatures) error) error {
	le := binary.LittleEndian
	eocdPos, eocd, err := findEndRecord(in, size)
	if err != nil {
		return err
	}
	if le.Uint16(eocd[4:]) != 0 || le.Uint16(eocd[6:]) != 0 {
		return &Error{Msg: ErrMalformed.Msg, Detail: "multi-disk archives are not supported"}
	}
	count := int(le.Uint16(eocd[10:]))
	cdSize := int64(le.Uint32(eocd[12:]))
	cdOff := int64(le.Uint32(eocd[16:]))
	if count == 0xffff || cdSize == 0xffffffff || cdOff == 0xffffffff {
		return &Error{Msg: ErrMalformed.Msg, Detail: "zip64 archives are not supported"}
	}
	if cdOff+cdSize != eocdPos {
		return &Error{Msg: ErrMalformed.Msg, Detail: fmt.Sprintf("the central directory (%d bytes at %d) does not end where the end record starts (%d)", cdSize, cdOff, eocdPos)}
	}

	// manifest.json's local header, at offset 0.
	var lh [localHeaderLen]byte
	if _, err := in.ReadAt(lh[:], 0); err != nil {
		return ErrTruncated
	}
	if le.Uint32(lh[:]) != sigLocal {
		return ErrBadHeader
	}
	flags, method := le.Uint16(lh[6:]), le.Uint16(lh[8:])
	crc, csize, usize := le.Uint32(lh[14:]), int64(le.Uint32(lh[18:])), int64(le.Uint32(lh[22:]))
	nameLen, extraLen := int64(le.Uint16(lh[26:])), int64(le.Uint16(lh[28:]))
	nameExtra := make([]byte, nameLen+extraLen)
	if _, err := in.ReadAt(nameExtra, localHeaderLen); err != nil {
		return ErrTruncated
	}
	if baseName(string(nameExtra[:nameLen])) != ManifestName {
		return &Error{Msg: ErrNotManifest.Msg, Detail: fmt.Sprintf("got %q", nameExtra[:nameLen])}
	}
	if method != 0 {
		return &Error{Msg: ErrCompressed.Msg, Detail: "manifest.json is compressed; " + StoredHint}
	}
	if flags&flagDescriptor != 0 || csize != usize {
		return &Error{Msg: ErrMalformed.Msg, Detail: "manifest.json has no size in its local header (data descriptor)"}
	}
	if csize > MaxManifestSize {
		return &Error{Msg: ErrManifestParse.Msg, Detail: fmt.Sprintf("manifest.json is %d bytes, more than %d", csize, MaxManifestSize)}
	}
	dataOff := localHeaderLen + nameLen + extraLen
	if dataOff+csize > cdOff {
		return ErrTruncated
	}
	man := make([]byte, csize)
	if _, err := in.ReadAt(man, dataOff); err != nil {
		return ErrTruncated
	}
	if got := crc32.ChecksumIEEE(man); got != crc {
		return &Error{Msg: ErrCRC.Msg, Detail: fmt.Sprintf("entry %q: want %08x, got %08x", ManifestName, crc, got)}
	}
	oldExtra := nameExtra[nameLen:]
	sigs, err := ParseSignatures(findExtra(oldExtra, SignatureExtraID))
	if err != nil {
		return err
	}
	if err := edit(man, sigs); err != nil {
		return err
	}
	var field []byte
	if !sigs.Empty() {
		if field, err = SignatureExtraField(sigs.Marshal()); err != nil {
			return err
		}
	}
	newExtra := replaceExtra(oldExtra, SignatureExtraID, field)
	if len(newExtra) > 0xffff {
		return fmt.Errorf("manifest.json's extra field would be %d bytes, more than a zip header holds", len(newExtra))
	}
	delta := int64(len(newExtra)) - extraLen

	// The central directory, with offsets moved and manifest.json's extra
	// field replaced.
	cd := make([]byte, cdSize)
	if _, err := in.ReadAt(cd, cdOff); err != nil {
		return ErrTruncated
	}
	var newCD bytes.Buffer
	seenManifest := false
	for i, rest := 0, cd; i < count; i++ {
		if len(rest) < centralHeaderLen || le.Uint32(rest) != sigCentral {
			return &Error{Msg: ErrMalformed.Msg, Detail: fmt.Sprintf("central directory entry %d is damaged", i)}
		}
		n, x, c := int(le.Uint16(rest[28:])), int(le.Uint16(rest[30:])), int(le.Uint16(rest[32:]))
		if len(rest) < centralHeaderLen+n+x+c {
			return &Error{Msg: ErrMalformed.Msg, Detail: fmt.Sprintf("central directory entry %d is damaged", i)}
		}
		h := append([]byte(nil), rest[:centralHeaderLen]...)
		name := rest[centralHeaderLen : centralHeaderLen+n]
		extra := rest[centralHeaderLen+n : centralHeaderLen+n+x]
		comment := rest[centralHeaderLen+n+x : centralHeaderLen+n+x+c]
		rest = rest[centralHeaderLen+n+x+c:]
		off := int64(le.Uint32(h[42:]))
		if off == 0xffffffff {
			return &Error{Msg: ErrMalformed.Msg, Detail: "zip64 archives are not supported"}
		}
		if off == 0 {
			seenManifest = true
			extra = replaceExtra(extra, SignatureExtraID, field)
			if len(extra) > 0xffff {
				return fmt.Errorf("manifest.json's central extra field would be %d bytes, more than a zip header holds", len(extra))
			}
			le.PutUint16(h[30:], uint16(len(extra)))
		} else {
			if off+delta > 0xfffffffe {
				return fmt.Errorf("the signed bundle would need zip64")
			}
			le.PutUint32(h[42:], uint32(off+delta))
		}
		newCD.Write(h)
		newCD.Write(name)
		newCD.Write(extra)
		newCD.Write(comment)
	}
	if !seenManifest {
		return &Error{Msg: ErrMalformed.Msg, Detail: "the central directory does not list manifest.json"}
	}
	if cdOff+delta+int64(newCD.Len()) > 0xfffffffe {
		return fmt.Errorf("the signed bundle would need zip64")
	}

	le.PutUint16(lh[28:], uint16(len(newExtra)))
	out := func(b []byte) error { _, err := w.Write(b); return err }
	for _, b := range [][]byte{lh[:], nameExtra[:nameLen], newExtra, man} {
		if err := out(b); err != nil {
			return fmt.Errorf("writing bundle: %w", err)
		}
	}
	if _, err := io.Copy(w, io.NewSectionReader(in, dataOff+csize, cdOff-(dataOff+csize))); err != nil {
		return fmt.Errorf("writing bundle: %w", err)
	}
	if err := out(newCD.Bytes()); err != nil {
		return fmt.Errorf("writing bundle: %w", err)
	}
	end := append([]byte(nil), eocd...)
	le.PutUint32(end[12:], uint32(newCD.Len()))
	le.PutUint32(end[16:], uint32(cdOff+delta))
	if err := out(end); err != nil {
		return fmt.Errorf("writing bundle: %w", err)
	}
	return nil
}

// findEndRecord finds the end of central directory record (with its
// comment) at the end of the archive.
func findEndRecord(in io.ReaderAt, size int64) (int64, []byte, error) {
	if size < endRecordLen {
		return 0, nil, ErrTruncated
	}
	n := min(size, endRecordLen+0xffff)
	buf := make([]byte, n)
	if _, err := in.ReadAt(buf, size-n); err != nil {
		return 0, nil, ErrTruncated
	}
	for i := len(buf) - endRecordLen; i >= 0; i-- {
		if binary.LittleEndian.Uint32(buf[i:]) != sigEnd {
			continue
		}
		if clen := int(binary.LittleEndian.Uint16(buf[i+20:])); i+endRecordLen+clen == len(buf) {
			return size - n + int64(i), buf[i:], nil
		}
	}
	return 0, nil, &Error{Msg: ErrMalformed.Msg, Detail: "no end of central directory record: not a complete zip archive"}
}

// SignFile signs the bundle at in with key as signature slot, writes the
// result to out (which may be in itself: it is replaced only once the new
// bundle is complete) and returns the signatures the result carries.
func SignFile(in, out string, slot int, key crypto.Signer) (*Signatures, error) {
	if slot < 0 || slot >= MaxKeys {
		return nil, fmt.Errorf("signature slot %d: a device has slots 0 to %d", slot, MaxKeys-1)
	}
	if key == nil {
		return nil, errNoSigners
	}
	var result *Signatures
	err := rewriteFile(in, out, func(man []byte, s *Signatures) error {
		sig, err := SignManifest(man, key)
		if err != nil {
			return err
		}
		s.Sig[slot] = sig
		result = s
		return nil
	})
	return result, err
}

// rewriteFile is RewriteSignatures from the file in to a temporary file
// renamed to out when complete.
func rewriteFile(in, out string, edit func(manifest []byte, s *Signatures) error) error {
	f, err := os.Open(in)
	if err != nil {
		return fmt.Errorf("opening bundle: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("opening bundle: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".*.tmp")
	if err != nil {
		return fmt.Errorf("writing bundle: %w", err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	if err := RewriteSignatures(f, st.Size(), tmp, edit); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("writing bundle: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing bundle: %w", err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return fmt.Errorf("writing bundle: %w", err)
	}
	return nil
}
