package bundle

import (
	"encoding/binary"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"strings"
)

// Zip record signatures (APPNOTE 4.3).
const (
	sigLocal      = 0x04034b50
	sigCentral    = 0x02014b50
	sigEnd        = 0x06054b50
	sigDescriptor = 0x08074b50

	localHeaderLen = 30
	flagDescriptor = 1 << 3

	// ManifestName is the name of the first entry of a bundle.
	ManifestName = "manifest.json"
	// SignatureExtraID is the id of the local-header extra field of
	// manifest.json that holds the bundle signatures.
	SignatureExtraID = 0x293a
	// MaxManifestSize bounds manifest.json, which is held in memory.
	MaxManifestSize = 1 << 20
	// MaxNameLen bounds entry names.
	MaxNameLen = 1024
	// MaxDeviceNameLen is the longest entry name (after its leading
	// directory, see Entry.BaseName) a device accepts: its updater keeps
	// the name in a 50-byte buffer and refuses longer ones with "Too long
	// file name".
	MaxDeviceNameLen = 49
)

// Reader parses a bundle as a stream: manifest.json first, then each entry
// in archive order, stopping at the central directory. It never holds more
// than the manifest and one small buffer in memory.
type Reader struct {
	r   io.Reader
	off int64

	manifest    *Manifest
	rawManifest []byte
	signatures  []byte

	cur  *Entry
	err  error // sticky
	done bool
}

// Entry is one archive entry after the manifest. Read returns its data;
// the last Read (io.EOF) is returned only after the CRC-32 matched.
type Entry struct {
	// Name is the entry name as stored in the archive.
	Name string
	// Size is the entry's size from its local header.
	Size int64
	// CRC32 is the CRC-32 from the local header (or data descriptor).
	CRC32 uint32
	// Extra is the local header's extra field.
	Extra []byte
	// Descriptor is true when the entry's data is followed by a data
	// descriptor (flag bit 3). A device skips the descriptor only after
	// an entry it skips: after a part it writes it expects the next local
	// header and fails with "Malformed archive (invalid file header)".
	Descriptor bool

	rd       *Reader
	left     int64
	crc      hash.Hash32
	finished bool
	err      error
}

// BaseName returns the entry name without any leading directory, which is
// how a device matches entries to part sources.
func (e *Entry) BaseName() string { return baseName(e.Name) }

func baseName(name string) string {
	if i := strings.IndexByte(name, '/'); i >= 0 {
		return name[i+1:]
	}
	return name
}

// NewReader reads the first entry of the bundle from r, which must be a
// stored manifest.json with a matching CRC-32 and the required fields
// (platform, version, build_id, parts).
func NewReader(r io.Reader) (*Reader, error) {
	rd := &Reader{r: r}
	sig, err := rd.readSig()
	if err != nil {
		return nil, err
	}
	if sig != sigLocal {
		return nil, ErrBadHeader
	}
	e, err := rd.readLocalHeader()
	if err != nil {
		return nil, err
	}
	if e.BaseName() != ManifestName {
		return nil, &Error{Msg: ErrNotManifest.Msg, Detail: fmt.Sprintf("got %q", e.Name)}
	}
	if e.Size > MaxManifestSize {
		return nil, &Error{Msg: ErrManifestParse.Msg, Detail: fmt.Sprintf("manifest.json is %d bytes, more than %d", e.Size, MaxManifestSize)}
	}
	data, err := io.ReadAll(e)
	if err != nil {
		return nil, err
	}
	rd.rawManifest = data
	rd.signatures = findExtra(e.Extra, SignatureExtraID)
	m, err := ParseManifest(data)
	if err != nil {
		return nil, &Error{Msg: ErrManifestParse.Msg, Detail: err.Error()}
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	if e.Descriptor {
		return nil, &Error{Msg: ErrBadHeader.Msg, Detail: "manifest.json is followed by a data descriptor, which a device cannot stream past: write the bundle without data descriptors (otactl bundle create does)"}
	}
	rd.manifest = m
	rd.cur = nil
	return rd, nil
}

// Manifest returns the parsed manifest.
func (rd *Reader) Manifest() *Manifest { return rd.manifest }

// RawManifest returns manifest.json exactly as stored (what signatures
// cover).
func (rd *Reader) RawManifest() []byte { return rd.rawManifest }

// Signatures returns the raw data of manifest.json's extra field 0x293a
// (JSON {"sig0": "<base64>", ...}), or nil when the bundle is not signed.
func (rd *Reader) Signatures() []byte { return rd.signatures }

// Offset returns the number of bytes consumed from the stream so far.
func (rd *Reader) Offset() int64 { return rd.off }

// Next skips the rest of the current entry (still checking its CRC-32) and
// returns the next one. It returns io.EOF when it reaches the central
// directory, after which nothing more is read from the stream.
func (rd *Reader) Next() (*Entry, error) {
	if rd.err != nil {
		return nil, rd.err
	}
	if rd.done {
		return nil, io.EOF
	}
	if rd.cur != nil && !rd.cur.finished {
		if _, err := io.Copy(io.Discard, rd.cur); err != nil {
			return nil, rd.fail(err)
		}
	}
	if rd.cur != nil && rd.cur.err != nil && rd.cur.err != io.EOF {
		return nil, rd.fail(rd.cur.err)
	}
	rd.cur = nil
	sig, err := rd.readSig()
	if err != nil {
		return nil, rd.fail(err)
	}
	switch sig {
	case sigCentral, sigEnd:
		rd.done = true
		return nil, io.EOF
	case sigLocal:
	default:
		return nil, rd.fail(ErrBadHeader)
	}
	e, err := rd.readLocalHeader()
	if err != nil {
		return nil, rd.fail(err)
	}
	return e, nil
}

func (rd *Reader) fail(err error) error {
	if rd.err == nil {
		rd.err = err
	}
	return rd.err
}

// read fills p from the stream, turning a premature end into ErrTruncated.
func (rd *Reader) read(p []byte) error {
	n, err := io.ReadFull(rd.r, p)
	rd.off += int64(n)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return ErrTruncated
	}
	return err
}

func (rd *Reader) readSig() (uint32, error) {
	var b [4]byte
	if err := rd.read(b[:]); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b[:]), nil
}

// readLocalHeader reads the rest of a local file header (after its
// signature), name and extra field, and makes it the current entry.
func (rd *Reader) readLocalHeader() (*Entry, error) {
	var h [localHeaderLen - 4]byte
	if err := rd.read(h[:]); err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	flags := le.Uint16(h[2:])
	method := le.Uint16(h[4:])
	crc := le.Uint32(h[10:])
	csize := le.Uint32(h[14:])
	usize := le.Uint32(h[18:])
	nameLen := int(le.Uint16(h[22:]))
	extraLen := int(le.Uint16(h[24:]))
	if nameLen > MaxNameLen {
		return nil, ErrFileName
	}
	buf := make([]byte, nameLen+extraLen)
	if err := rd.read(buf); err != nil {
		return nil, err
	}
	if method != 0 {
		return nil, &Error{Msg: ErrCompressed.Msg, Detail: fmt.Sprintf("entry %q uses compression method %d; %s", buf[:nameLen], method, StoredHint)}
	}
	if n := len(baseName(string(buf[:nameLen]))); n > MaxDeviceNameLen {
		return nil, &Error{Msg: ErrFileName.Msg, Detail: fmt.Sprintf("entry %q: a device takes names of at most %d bytes", buf[:nameLen], MaxDeviceNameLen)}
	}
	if csize != usize {
		return nil, &Error{Msg: ErrMalformed.Msg, Detail: fmt.Sprintf("entry %q: compressed size %d != size %d", buf[:nameLen], csize, usize)}
	}
	if csize == 0xffffffff {
		return nil, &Error{Msg: ErrMalformed.Msg, Detail: "zip64 entries are not supported"}
	}
	descriptor := flags&flagDescriptor != 0
	if descriptor && csize == 0 && crc == 0 {
		return nil, &Error{Msg: ErrMalformed.Msg, Detail: fmt.Sprintf("entry %q has no size in its local header", buf[:nameLen])}
	}
	e := &Entry{
		Name:       string(buf[:nameLen]),
		Size:       int64(csize),
		CRC32:      crc,
		Extra:      buf[nameLen:],
		Descriptor: descriptor,
		rd:         rd,
		left:       int64(csize),
		crc:        crc32.NewIEEE(),
	}
	rd.cur = e
	return e, nil
}

// Read reads the entry's data.
func (e *Entry) Read(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	if e.left == 0 {
		e.err = e.finish()
		if e.err == nil {
			e.err = io.EOF
		}
		return 0, e.err
	}
	if int64(len(p)) > e.left {
		p = p[:e.left]
	}
	n, err := e.rd.r.Read(p)
	e.rd.off += int64(n)
	e.left -= int64(n)
	e.crc.Write(p[:n])
	if err == io.EOF {
		if e.left > 0 {
			e.err = ErrTruncated
			return n, e.err
		}
		err = nil
	}
	if err != nil {
		e.err = err
		return n, err
	}
	if e.left == 0 {
		if ferr := e.finish(); ferr != nil {
			e.err = ferr
			return n, ferr
		}
	}
	return n, nil
}

// finish consumes the data descriptor, if any, and checks the CRC-32.
func (e *Entry) finish() error {
	if e.finished {
		return nil
	}
	e.finished = true
	want := e.CRC32
	if e.Descriptor {
		var b [12]byte
		if err := e.rd.read(b[:4]); err != nil {
			return err
		}
		rest := b[:12]
		if binary.LittleEndian.Uint32(b[:4]) == sigDescriptor {
			if err := e.rd.read(rest); err != nil {
				return err
			}
		} else {
			copy(rest, b[:4])
			if err := e.rd.read(rest[4:]); err != nil {
				return err
			}
		}
		if dcrc := binary.LittleEndian.Uint32(rest); want == 0 {
			want = dcrc
		}
	}
	if got := e.crc.Sum32(); got != want {
		return &Error{Msg: ErrCRC.Msg, Detail: fmt.Sprintf("entry %q: want %08x, got %08x", e.Name, want, got)}
	}
	return nil
}

// findExtra returns the data of the extra field with id, or nil.
func findExtra(extra []byte, id uint16) []byte {
	for len(extra) >= 4 {
		fid := binary.LittleEndian.Uint16(extra)
		n := int(binary.LittleEndian.Uint16(extra[2:]))
		extra = extra[4:]
		if n > len(extra) {
			return nil
		}
		if fid == id {
			return append([]byte(nil), extra[:n]...)
		}
		extra = extra[n:]
	}
	return nil
}
