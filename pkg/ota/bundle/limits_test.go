package bundle

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"strings"
	"testing"
)

// descEntry is rawEntry with the data-descriptor flag and a signed
// descriptor after the data (as archive/zip's Writer.Create writes).
func descEntry(name string, data []byte) []byte {
	le := binary.LittleEndian
	b := rawEntry(name, data)
	le.PutUint16(b[6:], 8)
	b = le.AppendUint32(b, sigDescriptor)
	b = le.AppendUint32(b, crc32.ChecksumIEEE(data))
	b = le.AppendUint32(b, uint32(len(data)))
	return le.AppendUint32(b, uint32(len(data)))
}

const limitsManifest = `{"platform":"esp32","version":"1","build_id":"b","parts":{"app":{"type":"app","src":"app.bin"}}}`

// A device skips a data descriptor only after an entry it skips; after
// manifest.json or a part it writes, it expects a local header.
func TestDataDescriptorLikeADevice(t *testing.T) {
	end := []byte{0x50, 0x4b, 1, 2}
	join := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

	_, err := Inspect(bytes.NewReader(join(descEntry(ManifestName, []byte(limitsManifest)), rawEntry("app.bin", []byte("x")), end)))
	if !errors.Is(err, ErrBadHeader) {
		t.Fatalf("descriptor after manifest.json: %v", err)
	}
	_, err = Verify(bytes.NewReader(join(rawEntry(ManifestName, []byte(limitsManifest)), descEntry("app.bin", []byte("x")), end)))
	if !errors.Is(err, ErrBadHeader) {
		t.Fatalf("descriptor after a part: %v", err)
	}
	// After an entry that no part names, the device skips it.
	rep, err := Verify(bytes.NewReader(join(rawEntry(ManifestName, []byte(limitsManifest)), descEntry("README", []byte("skip me")), rawEntry("app.bin", []byte("x")), end)))
	if err != nil || len(rep.Entries) != 2 {
		t.Fatalf("descriptor after a skipped entry: %v %+v", err, rep)
	}
}

// A device keeps entry names (after the first directory) in a 50-byte
// buffer: "Too long file name".
func TestEntryNameLengthLikeADevice(t *testing.T) {
	end := []byte{0x50, 0x4b, 1, 2}
	long := strings.Repeat("n", MaxDeviceNameLen+1)
	b := bytes.Join([][]byte{rawEntry(ManifestName, []byte(limitsManifest)), rawEntry("app.bin", []byte("x")), rawEntry(long, []byte("y")), end}, nil)
	if _, err := Inspect(bytes.NewReader(b)); !errors.Is(err, ErrFileName) {
		t.Fatalf("%d-byte entry name: %v", len(long), err)
	}
	// The leading directory does not count.
	ok := "dir/" + strings.Repeat("n", MaxDeviceNameLen)
	b = bytes.Join([][]byte{rawEntry(ManifestName, []byte(limitsManifest)), rawEntry("app.bin", []byte("x")), rawEntry(ok, []byte("y")), end}, nil)
	if _, err := Inspect(bytes.NewReader(b)); err != nil {
		t.Fatalf("%q: %v", ok, err)
	}
	// Create refuses to write what a device cannot read.
	var buf bytes.Buffer
	err := Create(&buf, &Manifest{Platform: "esp32", Version: "1", BuildID: "b"},
		[]PartData{BytesData("app", Part{Type: "app", Src: long}, []byte("x"))}, nil)
	if !errors.Is(err, ErrFileName) {
		t.Fatalf("Create with a %d-byte src: %v", len(long), err)
	}
}

// Part names end up as file names (the emulator stores parts by name):
// Create and Verify refuse names that are not flat.
func TestPartNames(t *testing.T) {
	for _, name := range []string{"../x", "a/b", "..", ""} {
		var buf bytes.Buffer
		err := Create(&buf, &Manifest{Platform: "esp32", Version: "1", BuildID: "b"},
			[]PartData{BytesData(name, Part{Type: "app", Src: "app.bin"}, []byte("x"))}, nil)
		if err == nil {
			t.Errorf("Create accepted part name %q", name)
		}
	}
	end := []byte{0x50, 0x4b, 1, 2}
	man := `{"platform":"esp32","version":"1","build_id":"b","parts":{"../../x":{"type":"app","src":"app.bin"}}}`
	_, err := Verify(bytes.NewReader(bytes.Join([][]byte{rawEntry(ManifestName, []byte(man)), rawEntry("app.bin", []byte("x")), end}, nil)))
	if !errors.Is(err, ErrBadPartName) {
		t.Fatalf("Verify of part name ../../x: %v", err)
	}
}
