package emulator

import (
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync/atomic"

	"github.com/otactl/otactl/pkg/ota/bundle"
	"github.com/otactl/otactl/pkg/ota/wire"
)

// BootState is the device's boot configuration (OTA.GetBootState), as it
// answers it and keeps it on flash (bootstate.json): the contract's type.
type BootState = wire.BootState

// PageSize is the unit of the emulated flash's data writes: file data (a
// part, a file copied by a snapshot or the first boot's merge) reaches the
// flash one page at a time, the sector size of an ESP32's SPI flash, each
// page one FlashWrite. So a flow makes the same writes however its bytes
// arrive (see docs/reliability.md, "Power loss").
const PageSize = 4096

// FlashWrite describes one write to the emulated flash; Hooks.FlashWrite
// sees every one before it happens. A power cut at a write (ErrPowerCut)
// means it did not happen; a torn write (ErrTornWrite) happened in part.
type FlashWrite struct {
	// Seq numbers the writes of this Device from 1.
	Seq int
	// Kind is one of "erase" (a slot is cleared), "part" (a page of part
	// data, written by an update or copied by a snapshot), "manifest" (a
	// slot's manifest: its temporary file, then its rename), "fs" (a file
	// the first boot copies from the old slot's filesystem: a page of its
	// data, or the rename that puts it in place), "bootstate" (the boot
	// state's temporary file) and "bootstate-commit" (its rename over the
	// old one).
	Kind string
	// Path is relative to Config.StateDir.
	Path string
	// Data is true for a page of file data (kinds "part" and "fs"), false
	// for the writes that erase, create metadata or rename.
	Data bool
}

// ErrPowerCut is returned by a FlashWrite hook to cut the device's power at
// that write: the write does not happen, the device goes off every
// transport at once without replying, and nothing more is written. Start a
// new Device on the same StateDir to "power it on again".
var ErrPowerCut = errors.New("power cut")

// ErrTornWrite is returned by a FlashWrite hook to cut the power in the
// middle of that write: half of a data page or of a temporary file reaches
// the flash, and an erase removes the slot's manifest but not its data. A
// rename happens whole or not at all, so there it is a plain power cut.
// errors.Is(ErrTornWrite, ErrPowerCut) holds.
var ErrTornWrite = fmt.Errorf("%w in the middle of a write", ErrPowerCut)

// Hooks inject faults. Nil hooks do nothing.
type Hooks struct {
	// FlashWrite is called before every flash write of the device (not
	// those of the factory image New puts in a new state dir). Returning
	// ErrPowerCut cuts the power; any other error fails that write (and
	// so the operation doing it).
	FlashWrite func(w FlashWrite) error
	// DropReply, when it returns true for a call's method, loses that
	// call's reply on its way to the client: the device did everything
	// the call asked (an OTA.Update installs and reboots), but the reply
	// never arrives and the link stays up, as when a broker or a radio
	// loses a message (docs/emulator.md, "From Go tests"). Over HTTP the
	// request then gets an empty answer.
	DropReply func(method string) bool
}

// PowerCutAt returns a FlashWrite hook that cuts the power at the n-th
// flash write whose kind is one of kinds (any kind when none is given).
func PowerCutAt(n int, kinds ...string) func(FlashWrite) error {
	var count atomic.Int64
	return func(w FlashWrite) error {
		if len(kinds) > 0 {
			match := false
			for _, k := range kinds {
				match = match || k == w.Kind
			}
			if !match {
				return nil
			}
		}
		if count.Add(1) >= int64(n) {
			return ErrPowerCut
		}
		return nil
	}
}

// flash is the emulated flash: slots and boot state in a directory.
//
//	<dir>/bootstate.json
//	<dir>/slot<N>/manifest.json   firmware manifest (absent: no firmware)
//	<dir>/slot<N>/parts/<name>    part data, one file per part
//	<dir>/slot<N>/fs/             the slot's filesystem
type flash struct {
	dir   string
	slots int
	// sync fsyncs each file and directory as it is written
	// (Config.FlashSync), so that the flash also survives a crash of the
	// host; without it the writes reach the host's page cache in the same
	// order, which is all an emulated power cut or a kill of the process
	// needs (docs/reliability.md, "Power loss").
	sync  bool
	hook  func(FlashWrite) error
	onCut func()
	seq   atomic.Int64
	dead  atomic.Bool
}

func (f *flash) op(kind, path string) error { return f.write(kind, path, false) }

func (f *flash) write(kind, path string, data bool) error {
	if f.dead.Load() {
		return ErrPowerCut
	}
	seq := int(f.seq.Add(1))
	if f.hook != nil {
		rel, err := filepath.Rel(f.dir, path)
		if err != nil {
			rel = path
		}
		if err := f.hook(FlashWrite{Seq: seq, Kind: kind, Path: rel, Data: data}); err != nil {
			if errors.Is(err, ErrPowerCut) {
				f.cut()
			}
			return err
		}
	}
	return nil
}

func (f *flash) cut() {
	if f.dead.CompareAndSwap(false, true) && f.onCut != nil {
		f.onCut()
	}
}

func (f *flash) slotDir(n int) string      { return filepath.Join(f.dir, "slot"+strconv.Itoa(n)) }
func (f *flash) manifestPath(n int) string { return filepath.Join(f.slotDir(n), bundle.ManifestName) }
func (f *flash) fsDir(n int) string        { return filepath.Join(f.slotDir(n), "fs") }
func (f *flash) bootPath() string          { return filepath.Join(f.dir, "bootstate.json") }

// partPath is where a part's data lives: parts of type "file" are files of
// the slot's filesystem, the others opaque images.
func (f *flash) partPath(slot int, name string, p *bundle.Part) string {
	if p.Type == "file" {
		return filepath.Join(f.fsDir(slot), p.Src)
	}
	return filepath.Join(f.slotDir(slot), "parts", name)
}

func (f *flash) validSlot(n int) bool { return n >= 0 && n < f.slots }

// loadBoot reads the persisted boot state.
func (f *flash) loadBoot() (BootState, error) {
	var bs BootState
	b, err := os.ReadFile(f.bootPath())
	if err != nil {
		return bs, fmt.Errorf("reading boot state: %w", err)
	}
	if err := json.Unmarshal(b, &bs); err != nil {
		return bs, fmt.Errorf("boot state %s is corrupt (%w): remove the state dir to start from factory firmware", f.bootPath(), err)
	}
	if !f.validSlot(bs.ActiveSlot) || !f.validSlot(bs.RevertSlot) {
		return bs, fmt.Errorf("boot state %s names slots outside 0..%d: start with --slots matching the state dir", f.bootPath(), f.slots-1)
	}
	return bs, nil
}

// saveBoot persists bs so that a power cut at any instant leaves either the
// old or the new state: temp file, fsync, rename, fsync of the directory.
func (f *flash) saveBoot(bs BootState) error {
	b, _ := json.Marshal(bs)
	return f.writeAtomic(f.bootPath(), b, "bootstate")
}

func (f *flash) writeAtomic(path string, data []byte, kind string) error {
	tmp := path + ".tmp"
	if err := f.op(kind, tmp); err != nil {
		if errors.Is(err, ErrTornWrite) {
			f.writeFile(tmp, data[:len(data)/2])
		}
		return err
	}
	if err := f.writeFile(tmp, data); err != nil {
		return err
	}
	commitKind := kind + "-commit"
	if kind != "bootstate" {
		commitKind = kind
	}
	if err := f.op(commitKind, path); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return f.syncDir(filepath.Dir(path))
}

// writeFile creates path (createNew) with data, fsynced with f.sync.
func (f *flash) writeFile(path string, data []byte) error {
	fh, err := createNew(path)
	if err != nil {
		return err
	}
	if _, err := fh.Write(data); err != nil {
		fh.Close()
		return err
	}
	if err := f.syncFile(fh); err != nil {
		fh.Close()
		return err
	}
	return fh.Close()
}

func (f *flash) syncFile(fh *os.File) error {
	if !f.sync {
		return nil
	}
	return fh.Sync()
}

// syncDir makes the names in dir durable, with f.sync.
func (f *flash) syncDir(dir string) error {
	if !f.sync {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return err
	}
	return nil
}

// eraseSlot removes a slot's firmware (manifest first, so a half-written
// slot never looks bootable).
func (f *flash) eraseSlot(n int) error {
	dir := f.slotDir(n)
	if err := f.op("erase", dir); err != nil {
		if errors.Is(err, ErrTornWrite) {
			os.Remove(f.manifestPath(n))
			f.syncDir(dir)
		}
		return err
	}
	if err := os.Remove(f.manifestPath(n)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := f.syncDir(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	for _, d := range []string{filepath.Join(dir, "parts"), filepath.Join(dir, "fs")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// syncSlot makes the names of the files written to slot n durable before
// its manifest makes the slot bootable (the files' data is fsynced as each
// is closed), with f.sync.
func (f *flash) syncSlot(n int) error {
	for _, d := range []string{filepath.Join(f.slotDir(n), "parts"), f.fsDir(n)} {
		if err := f.syncDir(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// loadManifest returns the manifest of the firmware in slot n.
func (f *flash) loadManifest(n int) (*bundle.Manifest, error) {
	b, err := os.ReadFile(f.manifestPath(n))
	if err != nil {
		return nil, fmt.Errorf("slot %d holds no firmware: %w", n, err)
	}
	m, err := bundle.ParseManifest(b)
	if err != nil {
		return nil, fmt.Errorf("slot %d manifest: %w", n, err)
	}
	return m, nil
}

// partWriter writes file data one page (PageSize bytes) at a time, each
// page one flash write of its kind; Close writes the last, shorter page.
type partWriter struct {
	f    *flash
	kind string
	path string
	fh   *os.File
	page []byte
}

func (f *flash) create(path, kind string) (*partWriter, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	fh, err := createNew(path)
	if err != nil {
		return nil, err
	}
	return &partWriter{f: f, kind: kind, path: path, fh: fh, page: make([]byte, 0, PageSize)}, nil
}

// createNew creates path as a new regular file, replacing whatever is
// there: a leftover file or a symlink is removed, never followed.
func createNew(path string) (*os.File, error) {
	// O_EXCL creates a new file or fails, a symlink included, without
	// following it: only then is there something to remove (one system
	// call less for each file the flash writes, in the usual case).
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if !errors.Is(err, os.ErrExist) {
		return fh, err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
}

func (w *partWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), PageSize-len(w.page))
		w.page = append(w.page, p[:k]...)
		p, n = p[k:], n+k
		if len(w.page) == PageSize {
			if err := w.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

// flush writes the buffered page. A page that fails is dropped, so that
// Close does not write it again.
func (w *partWriter) flush() error {
	if len(w.page) == 0 {
		return nil
	}
	page := w.page
	w.page = w.page[:0]
	if err := w.f.write(w.kind, w.path, true); err != nil {
		if errors.Is(err, ErrTornWrite) {
			w.fh.Write(page[:len(page)/2])
			w.f.syncFile(w.fh)
		}
		return err
	}
	_, err := w.fh.Write(page)
	return err
}

// Close writes the last page, syncs and closes the file.
func (w *partWriter) Close() error {
	err := w.flush()
	if err == nil {
		err = w.f.syncFile(w.fh)
	}
	if cerr := w.fh.Close(); err == nil {
		err = cerr
	}
	return err
}

// digestFile reads a file back and returns its size and hex digests.
func digestFile(path string) (int64, string, string, error) {
	fh, err := os.Open(path)
	if err != nil {
		return 0, "", "", err
	}
	defer fh.Close()
	h1, h256 := sha1.New(), sha256.New()
	n, err := io.Copy(io.MultiWriter(h1, h256), fh)
	if err != nil {
		return 0, "", "", err
	}
	return n, hex.EncodeToString(h1.Sum(nil)), hex.EncodeToString(h256.Sum(nil)), nil
}

// copyFile copies src to dst through page writes of kind.
func (f *flash) copyFile(src, dst, kind string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := f.create(dst, kind)
	if err != nil {
		return err
	}
	if _, err := io.CopyBuffer(out, in, make([]byte, 32<<10)); err != nil {
		out.fh.Close()
		return err
	}
	return out.Close()
}

// listFiles returns the regular files under dir, relative, sorted.
func listFiles(dir string) ([]string, error) {
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	sort.Strings(out)
	return out, err
}

// mergeFS copies files that exist in slot from's filesystem but not in
// slot to's; existing files are never overwritten. Each file is copied to a
// temporary file outside the filesystem, then renamed into place, so that
// a power cut leaves it whole or absent: a later merge into the slot (its
// first boot again, after OTA.SetBootState) copies an absent file, where it
// would keep a half-written one.
func (f *flash) mergeFS(from, to int) error {
	files, err := listFiles(f.fsDir(from))
	if err != nil {
		return err
	}
	tmp := filepath.Join(f.slotDir(to), "merge.tmp")
	for _, rel := range files {
		dst := filepath.Join(f.fsDir(to), rel)
		if _, err := os.Lstat(dst); err == nil {
			continue
		}
		if err := f.copyFile(filepath.Join(f.fsDir(from), rel), tmp, "fs"); err != nil {
			return fmt.Errorf("copying %s: %w", rel, err)
		}
		if err := f.op("fs", dst); err != nil {
			return fmt.Errorf("copying %s: %w", rel, err)
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := os.Rename(tmp, dst); err != nil {
			return fmt.Errorf("copying %s: %w", rel, err)
		}
		if err := f.syncDir(filepath.Dir(dst)); err != nil {
			return err
		}
	}
	return nil
}

// copySlot copies slot from (parts, filesystem, manifest last) to slot to
// and verifies the copy.
func (f *flash) copySlot(from, to int) error {
	man, err := os.ReadFile(f.manifestPath(from))
	if err != nil {
		return err
	}
	if err := f.eraseSlot(to); err != nil {
		return err
	}
	for _, sub := range []string{"parts", "fs"} {
		files, err := listFiles(filepath.Join(f.slotDir(from), sub))
		if err != nil {
			return err
		}
		for _, rel := range files {
			src := filepath.Join(f.slotDir(from), sub, rel)
			dst := filepath.Join(f.slotDir(to), sub, rel)
			if err := f.copyFile(src, dst, "part"); err != nil {
				return err
			}
			_, a, _, err1 := digestFile(src)
			_, b, _, err2 := digestFile(dst)
			if err1 != nil || err2 != nil || a != b {
				return fmt.Errorf("verifying the copy of %s failed", rel)
			}
		}
	}
	if err := f.syncSlot(to); err != nil {
		return err
	}
	return f.writeAtomic(f.manifestPath(to), man, "manifest")
}
