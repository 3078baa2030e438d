// Package bundletest builds raw zip pieces by hand, for tests that need
// bundles the bundle package would refuse to create (wrong order, missing
// central directory, bad headers).
package bundletest

import (
	"encoding/binary"
	"hash/crc32"
)

// StoredEntry returns a zip local file header for name followed by data,
// stored (not compressed), with the right CRC-32 and sizes and no extra
// field.
func StoredEntry(name string, data []byte) []byte {
	le := binary.LittleEndian
	var h []byte
	h = le.AppendUint32(h, 0x04034b50) // local file header signature
	h = le.AppendUint16(h, 10)         // version needed
	h = le.AppendUint16(h, 0)          // flags
	h = le.AppendUint16(h, 0)          // method: stored
	h = le.AppendUint32(h, 0)          // time, date
	h = le.AppendUint32(h, crc32.ChecksumIEEE(data))
	h = le.AppendUint32(h, uint32(len(data))) // compressed size
	h = le.AppendUint32(h, uint32(len(data))) // size
	h = le.AppendUint16(h, uint16(len(name)))
	h = le.AppendUint16(h, 0) // extra field length
	h = append(h, name...)
	return append(h, data...)
}
