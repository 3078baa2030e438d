package emulator

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"os"
	"path/filepath"
	"testing"

	"github.com/otactl/otactl/pkg/ota/bundle"
	"github.com/otactl/otactl/pkg/ota/bundle/bundletest"
)

// localEntry builds a stored local entry by hand.
func localEntry(name string, data []byte) []byte { return bundletest.StoredEntry(name, data) }

// A part name is used as a file name in the slot: a name that climbs out
// of it must be refused, and nothing written outside the state dir.
func TestPartNameCannotEscapeSlot(t *testing.T) {
	e := newEnv(t, nil)
	app := []byte("escaped firmware")
	m := &bundle.Manifest{Name: "evil", Platform: "esp32", Version: "6.6.6", BuildID: "evil",
		Parts: map[string]*bundle.Part{}}
	var buf bytes.Buffer
	if err := bundle.Create(&buf, m, []bundle.PartData{
		bundle.BytesData("app", bundle.Part{Type: "app", Src: "app.bin"}, app),
	}, nil); err != nil {
		t.Fatal(err)
	}
	rd, err := bundle.NewReader(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	m2 := rd.Manifest()
	m2.Parts = map[string]*bundle.Part{"../../escaped": m2.Parts["app"]}
	b := rawBundle(t, m2, map[string][]byte{"app.bin": app})
	_, err = e.call("OTA.Update", map[string]any{"url": e.serve("/evil.zip", b)})
	if _, serr := os.Stat(filepath.Join(e.dir, "escaped")); serr == nil {
		t.Fatalf("part written outside its slot (reply %v)", err)
	}
	wantErr(t, err, -1, "Invalid part name")
	if bs := e.bootState(); bs != committed0 {
		t.Fatalf("%+v", bs)
	}
}

// withDescriptor rewrites the local entry called name in a bundle made by
// rawBundle so that it sets the data-descriptor flag and is followed by a
// signed descriptor, as archive/zip's Writer.Create does.
func withDescriptor(t *testing.T, b []byte, name string) []byte {
	t.Helper()
	le := binary.LittleEndian
	var out []byte
	for off := 0; off+4 <= len(b) && le.Uint32(b[off:]) == 0x04034b50; {
		nl := int(le.Uint16(b[off+26:]))
		el := int(le.Uint16(b[off+28:]))
		size := int(le.Uint32(b[off+18:]))
		end := off + 30 + nl + el + size
		ent := append([]byte(nil), b[off:end]...)
		if string(b[off+30:off+30+nl]) == name {
			le.PutUint16(ent[6:], le.Uint16(ent[6:])|8)
			crc := le.Uint32(ent[14:])
			ent = le.AppendUint32(ent, 0x08074b50)
			ent = le.AppendUint32(ent, crc)
			ent = le.AppendUint32(ent, uint32(size))
			ent = le.AppendUint32(ent, uint32(size))
		}
		out = append(out, ent...)
		off = end
		if off+4 > len(b) || le.Uint32(b[off:]) != 0x04034b50 {
			out = append(out, b[off:]...)
		}
	}
	return out
}

// A device's updater skips the data descriptor only after entries it
// skips; after a part it writes (and after manifest.json) it expects the
// next local header and fails. The emulator must not accept what a device
// refuses.
func TestDataDescriptorAfterWrittenPart(t *testing.T) {
	e := newEnv(t, nil)
	good := makeBundle(t, fw{version: "2.0.0"})
	rd, err := bundle.NewReader(bytes.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	entries := map[string][]byte{"app.bin": bytes.Repeat([]byte("app 2.0.0 "), 2000), "fs.img": []byte("fs image 2.0.0"), "new.txt": []byte("new in 2.0.0")}
	raw := rawBundle(t, rd.Manifest(), entries)
	for _, name := range []string{"app.bin", bundle.ManifestName} {
		b := withDescriptor(t, raw, name)
		_, err := e.call("OTA.Update", map[string]any{"url": e.serve("/desc.zip", b)})
		wantErr(t, err, -1, "Malformed archive (invalid file header)")
		if bs := e.bootState(); bs != committed0 {
			t.Fatalf("%+v", bs)
		}
	}
	// A descriptor after an entry no part names is skipped, as on a device.
	raw2 := rawBundle(t, rd.Manifest(), entries)
	extra := localEntryDesc("README.txt", []byte("not a part"))
	i := bytes.Index(raw2, []byte{0x50, 0x4b, 1, 2})
	b := append(append(append([]byte(nil), raw2[:i]...), extra...), raw2[i:]...)
	if _, err := e.call("OTA.Update", map[string]any{"url": e.serve("/skip.zip", b)}); err != nil {
		t.Fatalf("descriptor after a skipped entry: %v", err)
	}
	e.waitBoots(2)
}

func localEntryDesc(name string, data []byte) []byte {
	le := binary.LittleEndian
	ent := localEntry(name, data)
	le.PutUint16(ent[6:], 8)
	ent = le.AppendUint32(ent, 0x08074b50)
	ent = le.AppendUint32(ent, crc32.ChecksumIEEE(data))
	ent = le.AppendUint32(ent, uint32(len(data)))
	return le.AppendUint32(ent, uint32(len(data)))
}
