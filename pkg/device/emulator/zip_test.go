package emulator

import (
	"encoding/binary"
	"hash/crc32"
)

func localEntry(name string, data []byte) []byte {
	le := binary.LittleEndian
	var h []byte
	h = le.AppendUint32(h, 0x04034b50)
	h = le.AppendUint16(h, 10)
	h = le.AppendUint16(h, 0)
	h = le.AppendUint16(h, 0)
	h = le.AppendUint32(h, 0)
	h = le.AppendUint32(h, crc32.ChecksumIEEE(data))
	h = le.AppendUint32(h, uint32(len(data)))
	h = le.AppendUint32(h, uint32(len(data)))
	h = le.AppendUint16(h, uint16(len(name)))
	h = le.AppendUint16(h, 0)
	h = append(h, name...)
	return append(h, data...)
}
