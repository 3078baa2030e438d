package bundle

import (
	"archive/zip"
	"bytes"
	"crypto/sha1"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"hash/crc32"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/ota/bundle/bundletest"
)

func testManifest() *Manifest {
	return &Manifest{
		Name: "app", Platform: "esp32", Description: "test", Version: "1.2.3", BuildID: "20240101-x",
		Parts: map[string]*Part{"nvs": {Type: "nvs", Addr: Int64(0x9000), Size: Int64(0x4000), Fill: Int64(255)}},
		Extra: map[string]json.RawMessage{"emulator_behavior": json.RawMessage(`"ok"`)},
	}
}

func testParts() []PartData {
	app := bytes.Repeat([]byte("firmware!"), 1000)
	return []PartData{
		BytesData("app", Part{Type: "app", Src: "app.bin", Addr: Int64(0x10000)}, app),
		BytesData("fs", Part{Type: "fs", Src: "fs.img"}, []byte("filesystem image")),
		BytesData("empty", Part{Type: "file", Src: "empty.txt"}, nil),
	}
}

func createBundle(t *testing.T, opts *CreateOptions) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Create(&buf, testManifest(), testParts(), opts); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestRoundTrip(t *testing.T) {
	b := createBundle(t, &CreateOptions{Time: time.Date(2024, 5, 6, 7, 8, 10, 0, time.UTC), Signatures: []byte(`{"sig0":"AAAA"}`)})
	rd, err := NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	m := rd.Manifest()
	if m.Version != "1.2.3" || m.BuildTimestamp != "2024-05-06T07:08:10Z" || string(m.Extra["emulator_behavior"]) != `"ok"` {
		t.Fatalf("manifest: %+v", m)
	}
	if got := string(rd.Signatures()); got != `{"sig0":"AAAA"}` {
		t.Fatalf("signatures %q", got)
	}
	if !bytes.HasPrefix(rd.RawManifest(), []byte("{\n  \"name\": \"app\",\n  \"platform\": \"esp32\"")) {
		t.Fatalf("manifest not indented in mos order:\n%s", rd.RawManifest())
	}
	app := m.Parts["app"]
	if app.Size == nil || *app.Size != 9000 || app.CSSHA1 == "" || app.CSSHA256 == "" || *app.Addr != 0x10000 {
		t.Fatalf("app part %+v", app)
	}
	if nvs := m.Parts["nvs"]; nvs.Src != "" || *nvs.Fill != 255 {
		t.Fatalf("nvs part %+v", nvs)
	}
	got := map[string][]byte{}
	for {
		e, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(e)
		if err != nil {
			t.Fatal(err)
		}
		got[e.Name] = data
	}
	if len(got) != 3 || len(got["app.bin"]) != 9000 || string(got["fs.img"]) != "filesystem image" {
		t.Fatalf("entries: %v", got)
	}
	sum := sha1.Sum(got["app.bin"])
	if hex.EncodeToString(sum[:]) != app.CSSHA1 {
		t.Fatal("cs_sha1 does not match the data")
	}
	if _, err := rd.Next(); err != io.EOF {
		t.Fatalf("Next after end: %v", err)
	}
	rep, err := Verify(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Entries) != 3 || rep.Entries[0].Part == "" {
		t.Fatalf("report %+v", rep)
	}
}

// archive/zip is an independent reader of what Create wrote.
func TestArchiveZipReadsCreate(t *testing.T) {
	b := createBundle(t, nil)
	zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	if zr.File[0].Name != ManifestName || len(zr.File) != 4 {
		t.Fatalf("files: %v", zr.File)
	}
	for _, f := range zr.File {
		if f.Method != zip.Store {
			t.Errorf("%s not stored", f.Name)
		}
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil { // checks CRC
			t.Fatalf("%s: %v", f.Name, err)
		}
		rc.Close()
	}
}

// Our reader reads what archive/zip writes with Store (which uses data
// descriptors), and refuses Deflate.
func TestReadArchiveZipOutput(t *testing.T) {
	build := func(method uint16, manifestFirst bool) []byte {
		var buf bytes.Buffer
		zw := zip.NewWriter(&buf)
		man, _ := testManifest().Indented()
		add := func(name string, data []byte) {
			crc := crc32.ChecksumIEEE(data)
			w, err := zw.CreateRaw(&zip.FileHeader{Name: name, Method: method, CRC32: crc,
				CompressedSize64: uint64(len(data)), UncompressedSize64: uint64(len(data))})
			if err != nil {
				t.Fatal(err)
			}
			w.Write(data)
		}
		if manifestFirst {
			add(ManifestName, man)
			add("x.bin", []byte("xyz"))
		} else {
			add("x.bin", []byte("xyz"))
			add(ManifestName, man)
		}
		zw.Close()
		return buf.Bytes()
	}
	if _, err := Inspect(bytes.NewReader(build(zip.Store, true))); err != nil {
		t.Fatalf("stored archive/zip output: %v", err)
	}
	if _, err := NewReader(bytes.NewReader(build(zip.Deflate, true))); err == nil || err.Error() != "Cannot handle compressed .zip" && StatusMessage(err) != "Cannot handle compressed .zip" {
		t.Fatalf("deflate: %v", err)
	}
	_, err := NewReader(bytes.NewReader(build(zip.Store, false)))
	if !errors.Is(err, ErrNotManifest) {
		t.Fatalf("manifest not first: %v", err)
	}
}

func TestErrors(t *testing.T) {
	good := createBundle(t, nil)
	le := binary.LittleEndian
	manLen := int(le.Uint32(good[22:]))
	nameLen := int(le.Uint16(good[26:]))
	secondHdr := 30 + nameLen + manLen // no extra field without signatures
	mutate := func(f func(b []byte) []byte) []byte {
		b := append([]byte(nil), good...)
		return f(b)
	}
	cases := []struct {
		name string
		data []byte
		want *Error
	}{
		{"manifest CRC", mutate(func(b []byte) []byte { b[30+nameLen+5] ^= 1; return b }), ErrCRC},
		{"part CRC", mutate(func(b []byte) []byte { b[secondHdr+30+len("app.bin")+100] ^= 0xff; return b }), ErrCRC},
		{"compressed manifest", mutate(func(b []byte) []byte { b[8] = 8; return b }), ErrCompressed},
		{"compressed part", mutate(func(b []byte) []byte { b[secondHdr+8] = 8; return b }), ErrCompressed},
		{"sizes differ", mutate(func(b []byte) []byte { b[secondHdr+18]++; return b }), ErrMalformed},
		{"bad header", mutate(func(b []byte) []byte { b[secondHdr] = 'X'; return b }), ErrBadHeader},
		{"not a zip", []byte("hello, world, this is not a zip archive at all"), ErrBadHeader},
		{"truncated in part", good[:secondHdr+200], ErrTruncated},
		{"truncated before central dir", good[:secondHdr], ErrTruncated},
		{"truncated header", good[:10], ErrTruncated},
		{"empty", nil, ErrTruncated},
		{"manifest not json", func() []byte {
			var buf bytes.Buffer
			raw := rawEntry("manifest.json", []byte("not json"))
			buf.Write(raw)
			buf.Write([]byte{0x50, 0x4b, 1, 2})
			return buf.Bytes()
		}(), ErrManifestParse},
		{"manifest field missing", func() []byte {
			var buf bytes.Buffer
			buf.Write(rawEntry("manifest.json", []byte(`{"platform":"esp32","version":"1"}`)))
			buf.Write([]byte{0x50, 0x4b, 1, 2})
			return buf.Bytes()
		}(), ErrManifestField},
		{"manifest not first", func() []byte {
			var buf bytes.Buffer
			buf.Write(rawEntry("app.bin", []byte(`x`)))
			return buf.Bytes()
		}(), ErrNotManifest},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Inspect(bytes.NewReader(c.data))
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %q", err, c.want.Msg)
			}
			if StatusMessage(err) != c.want.Msg {
				t.Fatalf("status message %q, want %q", StatusMessage(err), c.want.Msg)
			}
		})
	}
}

func TestPartProblems(t *testing.T) {
	m := testManifest()
	var buf bytes.Buffer
	if err := Create(&buf, m, testParts(), nil); err != nil {
		t.Fatal(err)
	}
	// Re-create with a lying manifest: same data, wrong digests and size.
	for _, c := range []struct {
		name string
		edit func(p *Part)
		want *Error
	}{
		{"sha1", func(p *Part) { p.CSSHA1 = strings.Repeat("0", 40) }, ErrDigest},
		{"sha256", func(p *Part) { p.CSSHA256 = strings.Repeat("0", 64) }, ErrDigest},
		{"size", func(p *Part) { p.Size = Int64(1) }, ErrSize},
		{"missing", func(p *Part) { p.Src = "nope.bin" }, ErrMissingPart},
		{"bad src", func(p *Part) { p.Src = "../app.bin" }, ErrBadSrc},
	} {
		t.Run(c.name, func(t *testing.T) {
			rd, err := NewReader(bytes.NewReader(buf.Bytes()))
			if err != nil {
				t.Fatal(err)
			}
			m2 := *rd.Manifest()
			app := *m2.Parts["app"]
			c.edit(&app)
			m2.Parts = map[string]*Part{"app": &app}
			man, _ := m2.Indented()
			var b bytes.Buffer
			b.Write(rawEntry(ManifestName, man))
			b.Write(rawEntry("app.bin", bytes.Repeat([]byte("firmware!"), 1000)))
			b.Write([]byte{0x50, 0x4b, 1, 2})
			_, err = Verify(&b)
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
}

func TestCheckPlatform(t *testing.T) {
	m := &Manifest{Platform: "ESP32"}
	if err := m.CheckPlatform("esp32"); err != nil {
		t.Fatal(err)
	}
	if err := m.CheckPlatform("esp8266"); !errors.Is(err, ErrWrongPlatform) {
		t.Fatal(err)
	}
}

func TestValidSrc(t *testing.T) {
	for _, s := range []string{"a/b", `a\b`, "..", "x..y", ""} {
		if ValidSrc(s) == nil {
			t.Errorf("%q accepted", s)
		}
	}
	if err := ValidSrc("app.bin"); err != nil {
		t.Error(err)
	}
}

// rawEntry builds a stored local entry by hand.
func rawEntry(name string, data []byte) []byte { return bundletest.StoredEntry(name, data) }

func FuzzReader(f *testing.F) {
	var buf bytes.Buffer
	Create(&buf, testManifest(), testParts()[:1], nil)
	f.Add(buf.Bytes())
	f.Add(rawEntry(ManifestName, []byte(`{"platform":"esp32","version":"1","build_id":"b","parts":{"a":{"src":"a"}}}`)))
	f.Fuzz(func(t *testing.T, data []byte) {
		rd, err := NewReader(bytes.NewReader(data))
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error without a device message: %v", err)
			}
			return
		}
		for i := 0; ; i++ {
			e, err := rd.Next()
			if err != nil {
				break
			}
			if _, err := io.Copy(io.Discard, e); err != nil {
				break
			}
			if i > len(data) {
				t.Fatal("more entries than bytes")
			}
		}
	})
}

// Two parts that name the same entry: a device would write the entry for
// one of them and leave the other's data missing on flash. The manifest
// check that NewReader runs refuses it, so Verify and every streaming
// consumer (the emulator) give the same reason.
func TestDuplicateSrc(t *testing.T) {
	app := bytes.Repeat([]byte("firmware!"), 1000)
	sum := sha1.Sum(app)
	part := func() *Part {
		return &Part{Type: "app", Src: "app.bin", Size: Int64(int64(len(app))), CSSHA1: hex.EncodeToString(sum[:])}
	}
	m := &Manifest{Platform: "esp32", Version: "1", BuildID: "b", Parts: map[string]*Part{"app": part(), "app2": part()}}
	man, err := m.Indented()
	if err != nil {
		t.Fatal(err)
	}
	b := bytes.Join([][]byte{rawEntry(ManifestName, man), rawEntry("app.bin", app), {0x50, 0x4b, 1, 2}}, nil)
	_, verr := Verify(bytes.NewReader(b))
	if !errors.Is(verr, ErrDuplicateSrc) {
		t.Fatalf("Verify: %v, want %v", verr, ErrDuplicateSrc)
	}
	if !strings.Contains(verr.Error(), `parts "app" and "app2" both name entry "app.bin"`) {
		t.Errorf("Verify's reason does not name the parts: %v", verr)
	}
	_, rerr := NewReader(bytes.NewReader(b))
	if rerr == nil || rerr.Error() != verr.Error() {
		t.Fatalf("NewReader: %v, want the same error as Verify: %v", rerr, verr)
	}
	// A part without src (a fill part) may sit next to any other.
	m.Parts = map[string]*Part{"app": part(), "nvs": {Type: "nvs", Fill: Int64(255)}, "nvs2": {Type: "nvs", Fill: Int64(0)}}
	if err := m.Validate(); err != nil {
		t.Fatalf("parts without src: %v", err)
	}
}
