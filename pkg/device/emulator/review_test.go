package emulator

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/ota/bundle"
	"github.com/otactl/otactl/pkg/rpc/frame"
)

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

// A leftover temporary file in the state dir that is a symlink (planted,
// or a link the user made) must not redirect a boot-state write outside
// the state dir.
func TestBootStateWriteDoesNotFollowSymlink(t *testing.T) {
	e := newEnv(t, nil)
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(e.dir, "bootstate.json.tmp")); err != nil {
		t.Fatal(err)
	}
	e.mustCall("OTA.SetBootState", map[string]any{"commit_timeout": 7})
	if b, _ := os.ReadFile(victim); string(b) != "precious" {
		t.Fatalf("boot state written through a symlink into %s: %q", victim, b)
	}
	fi, err := os.Lstat(filepath.Join(e.dir, "bootstate.json"))
	if err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("bootstate.json is not a regular file: %v %v", fi, err)
	}
	if p := e.d.State().Persisted; p.CommitTimeout != 7 {
		t.Fatalf("persisted %+v", p)
	}
}

// A device counts every byte it receives, the central directory too: once
// the whole bundle is written, OTA.Status says 100 %, before OTA.End.
func TestPushProgressCountsWholeBundle(t *testing.T) {
	e := newEnv(t, nil)
	b := makeBundle(t, fw{version: "2.0.0"})
	e.mustCall("OTA.Begin", map[string]any{"size": len(b), "commit_timeout": 300})
	const chunk = 512
	for off := 0; off < len(b); off += chunk {
		end := min(off+chunk, len(b))
		e.mustCall("OTA.Write", map[string]any{"offset": off, "data": base64.StdEncoding.EncodeToString(b[off:end])})
	}
	e.waitUntil("100 % before OTA.End", func(s State) bool { return s.OTAProgress == 100 })
	var st map[string]any
	json.Unmarshal(e.mustCall("OTA.Status", nil), &st)
	if st["state"] != 1.0 || st["progress_percent"] != 100.0 {
		t.Fatalf("status before End: %v", st)
	}
	e.mustCall("OTA.End", nil)
	e.waitBoots(2)
}

// OTA.Update's success reply is the old devices' code-0 error, which
// rpc.Client hides: check the frame itself.
func TestUpdateSuccessFrame(t *testing.T) {
	e := newEnv(t, nil)
	params, _ := json.Marshal(map[string]any{"url": e.serve("/fw.zip", makeBundle(t, fw{version: "2.0.0"}))})
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	resp := e.d.Handler().HandleFrame(ctx, &frame.Frame{ID: 7, Src: "test", Method: "OTA.Update", Params: params})
	if resp == nil || resp.ID != 7 || resp.Error == nil || resp.Error.Code != 0 || resp.Error.Message != "Update applied, finalizing" {
		t.Fatalf("reply %+v (error %+v)", resp, resp.Error)
	}
	e.waitBoots(2)
}

// A committed firmware that crashes at boot bricks the device: it is off
// for good, so Done is closed (the command exits on it), and powering it
// on again fails with a message instead of "starting" with no transports.
func TestBrickedDeviceIsDone(t *testing.T) {
	e := newEnv(t, nil)
	e.update(fw{version: "2.0.0", behavior: BehaviorCrashOnBoot}, 300)
	if bs := e.bootState(); bs != committed0 {
		t.Fatalf("crash_on_boot did not revert: %+v", bs)
	}
	// Point the next boot at the crashing firmware, committed.
	e.mustCall("OTA.SetBootState", map[string]any{"active_slot": 1, "is_committed": true})
	e.d.Reboot()
	select {
	case <-e.d.Done():
	case <-time.After(waitLimit):
		t.Fatalf("bricked device not done: %+v", e.d.State())
	}
	if s := e.d.State(); !s.Bricked || s.Online {
		t.Fatalf("%+v", s)
	}
	e.d.Close()
	d, err := New(e.config(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "bricked") {
		t.Fatalf("Start of a bricked device: %v", err)
	}
}

// An OTA.Write that races with a successful OTA.End (it got the update
// before End finished it) must get an error reply, not crash the device.
// The interleaving is replayed by handing the finished update back to the
// device as if the Write had fetched it just before End completed.
func TestWriteRacingSuccessfulEnd(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.RebootAfter = time.Hour })
	b := makeBundle(t, fw{version: "2.0.0"})
	e.mustCall("OTA.Begin", map[string]any{"size": len(b)})
	e.d.mu.Lock()
	u := e.d.upd
	e.d.mu.Unlock()
	e.mustCall("OTA.Write", map[string]any{"offset": 0, "data": base64.StdEncoding.EncodeToString(b)})
	e.mustCall("OTA.End", nil)
	e.d.mu.Lock()
	e.d.upd = u
	e.d.mu.Unlock()
	_, err := e.call("OTA.Write", map[string]any{"offset": len(b), "data": "AAAA"})
	e.d.mu.Lock()
	e.d.upd = nil
	e.d.mu.Unlock()
	wantErr(t, err, -1, "Update not started")
}

// Hooks see the running device's flash writes, not the factory image that
// New writes to a new state dir: PowerCutAt(1, "bootstate") on a fresh
// dir cuts at the update's boot-state write, not inside New.
func TestHookSkipsFactoryImage(t *testing.T) {
	var first atomic.Value
	cut := PowerCutAt(1, "bootstate")
	e := newEnv(t, func(c *Config) {
		c.Hooks.FlashWrite = func(w FlashWrite) error {
			first.CompareAndSwap(nil, w)
			return cut(w)
		}
	})
	if w := first.Load(); w != nil {
		t.Fatalf("the hook saw a write before the device ran: %+v", w)
	}
	go e.call("OTA.Update", map[string]any{"url": e.serve("/fw.zip", makeBundle(t, fw{version: "2.0.0"})), "commit_timeout": 300})
	select {
	case <-e.d.Done():
	case <-time.After(waitLimit):
		t.Fatal("no power cut")
	}
	if w := first.Load().(FlashWrite); w.Seq != 1 || w.Kind != "erase" {
		t.Fatalf("first write seen %+v, want Seq 1, the erase of the spare slot", w)
	}
}
