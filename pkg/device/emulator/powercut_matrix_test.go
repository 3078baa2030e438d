package emulator

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/otactl/otactl/pkg/ota/bundle"
	"github.com/otactl/otactl/pkg/ota/wire"
	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/pipe"
	"github.com/otactl/otactl/pkg/transport/transporttest"
)

// The power-cut matrix (docs/reliability.md, "Power loss"). For each flow
// that writes the flash, a first run counts the flow's flash writes (N) and
// records the boot state on flash before each; then, for every k in
// 1..N+1, a run on a fresh copy of the same flash cuts the power at write
// k (k = N+1: just after the flow's last write; a torn cut leaves write k
// half done), and a new Device on that flash must:
//   - boot (not bricked, online);
//   - run a firmware whose every part matches its manifest (size, sha1,
//     sha256, read back from the slot on disk), and so must every other
//     slot that holds a manifest (a half-written slot never looks
//     bootable); every other file of such a slot's filesystem is whole;
//   - run the flow's old firmware, committed, or, only once the flow's
//     point of no return is written, its new one as the flow leaves it
//     (uncommitted after an update, committed after a commit); and exactly
//     what the boot state on flash at the cut says;
//   - report a self-consistent boot state (GetBootState, Sys.GetInfo, the
//     state on flash, the commit timer, OTA.Status idle);
//   - take a new update afterwards, boot it and commit it.
//
// `make test` runs a subset of the cut points: every write that is not a
// data page, the first and last page of each file, and the cut after the
// last write. OTACTL_POWERCUT=all (`make powercut`) runs every one, and a
// torn cut at every write that can tear.

// powerCutEnv set to "all" runs the whole matrix.
const powerCutEnv = "OTACTL_POWERCUT"

// pcOutcome is what a device runs after a power cut.
type pcOutcome struct {
	slot      int
	committed bool
	version   string
}

func (o pcOutcome) String() string {
	c := "uncommitted"
	if o.committed {
		c = "committed"
	}
	return fmt.Sprintf("%s in slot %d, %s", o.version, o.slot, c)
}

// pcFlow is one flow of the matrix.
type pcFlow struct {
	name string
	// template is the flash the flow starts from: "factory", "applied"
	// (an update applied, not booted yet) or "committed" (2.0.0 in slot
	// 1, committed; 1.0.0 in slot 0).
	template string
	// bootIsFlow: the flow is the boot of the template's flash itself.
	bootIsFlow bool
	// run performs the flow on a booted device; it returns early once
	// the power is cut.
	run func(r *pcRun)
	// old and new: the outcomes the flow may leave. new is allowed only
	// after the point of no return: the first write of kind ponrKind to
	// bootstate.json ("" = the template is already past it).
	old, new pcOutcome
	ponr     string
}

var pcFlows = []pcFlow{
	{
		name: "url-update", template: "factory",
		run: func(r *pcRun) {
			if r.call("OTA.Update", map[string]any{"url": r.h.url("/v2.zip"), "commit_timeout": 300}) {
				r.reboot()
			}
		},
		old: pcOutcome{0, true, "1.0.0"}, new: pcOutcome{1, false, "2.0.0"}, ponr: "bootstate-commit",
	},
	{
		name: "push", template: "factory",
		run: func(r *pcRun) {
			b := r.h.bundles["/v2.zip"]
			if !r.call("OTA.Begin", map[string]any{"size": len(b), "commit_timeout": 300}) {
				return
			}
			// 3000-byte writes: pages fill across writes.
			for off := 0; off < len(b); off += 3000 {
				chunk := b[off:min(off+3000, len(b))]
				if !r.call("OTA.Write", map[string]any{"offset": off, "data": base64.StdEncoding.EncodeToString(chunk)}) {
					return
				}
			}
			if r.call("OTA.End", nil) {
				r.reboot()
			}
		},
		old: pcOutcome{0, true, "1.0.0"}, new: pcOutcome{1, false, "2.0.0"}, ponr: "bootstate-commit",
	},
	{
		name: "first-boot-merge", template: "applied", bootIsFlow: true,
		old: pcOutcome{0, true, "1.0.0"}, new: pcOutcome{1, false, "2.0.0"},
	},
	{
		name: "commit", template: "applied",
		run: func(r *pcRun) { r.call("OTA.Commit", nil) },
		old: pcOutcome{0, true, "1.0.0"}, new: pcOutcome{1, true, "2.0.0"}, ponr: "bootstate-commit",
	},
	{
		name: "commit-timeout-rollback", template: "applied",
		run: func(r *pcRun) {
			r.h.t.Helper()
			r.clock.Advance(300 * time.Second) // the commit timer reverts and reboots
			r.awaitBoot()
		},
		old: pcOutcome{0, true, "1.0.0"}, new: pcOutcome{0, true, "1.0.0"},
	},
	{
		name: "revert", template: "applied",
		run: func(r *pcRun) {
			if r.call("OTA.Revert", nil) {
				r.reboot()
			}
		},
		old: pcOutcome{0, true, "1.0.0"}, new: pcOutcome{0, true, "1.0.0"},
	},
	{
		name: "snapshot", template: "factory",
		run: func(r *pcRun) { r.call("OTA.CreateSnapshot", nil) },
		old: pcOutcome{0, true, "1.0.0"}, new: pcOutcome{0, true, "1.0.0"},
	},
	{
		name: "snapshot-set-as-revert", template: "factory",
		run: func(r *pcRun) {
			r.call("OTA.CreateSnapshot", map[string]any{"set_as_revert": true, "commit_timeout": 60})
		},
		old: pcOutcome{0, true, "1.0.0"}, new: pcOutcome{0, false, "1.0.0"}, ponr: "bootstate-commit",
	},
	{
		name: "set-boot-state", template: "committed",
		run: func(r *pcRun) {
			if r.call("OTA.SetBootState", map[string]any{"active_slot": 0, "is_committed": false, "revert_slot": 1, "commit_timeout": 60}) &&
				r.call("Sys.Reboot", nil) {
				r.reboot()
			}
		},
		old: pcOutcome{1, true, "2.0.0"}, new: pcOutcome{0, false, "1.0.0"}, ponr: "bootstate-commit",
	},
	{
		// What a user may do next: an update before rebooting. The
		// device refuses it (its next boot uses the slot the update
		// would write), then boots slot 0.
		name: "set-boot-state-then-update", template: "committed",
		run: func(r *pcRun) {
			if !r.call("OTA.SetBootState", map[string]any{"active_slot": 0}) {
				return
			}
			_, err := r.do("OTA.Update", map[string]any{"url": r.h.url("/v2.zip"), "commit_timeout": 300})
			if r.off() {
				return
			}
			var re *rpc.Error
			if !errors.As(err, &re) || re.Code != -1 || re.Message != wire.MsgInitFailed {
				r.t.Fatalf("OTA.Update into the slot the next boot uses: %v, want -1 %q", err, wire.MsgInitFailed)
			}
			if r.call("Sys.Reboot", nil) {
				r.reboot()
			}
		},
		old: pcOutcome{1, true, "2.0.0"}, new: pcOutcome{0, true, "1.0.0"}, ponr: "bootstate-commit",
	},
}

// TestPowerCutMatrix: see the comment at the top of this file.
func TestPowerCutMatrix(t *testing.T) {
	all := os.Getenv(powerCutEnv) == "all"
	h := newPCHarness(t)
	var points, torn, writes, flows, unbootable, wrong int
	for _, f := range pcFlows {
		t.Run(f.name, func(t *testing.T) {
			ws := h.count(t, f)
			n := len(ws)
			ponr := 0
			if f.ponr != "" {
				for i, w := range ws {
					if w.Kind == f.ponr && strings.HasPrefix(w.Path, "bootstate.json") {
						ponr = i + 1
						break
					}
				}
				if ponr == 0 {
					t.Fatalf("no %s write among the flow's %d writes", f.ponr, n)
				}
			}
			pts := pcSample(ws, all)
			seen := map[pcOutcome]int{}
			for _, pt := range pts {
				v, got := h.cutAt(t, f, ws, pt, ponr)
				seen[got]++
				switch v {
				case pcUnbootable:
					unbootable++
				case pcWrong:
					wrong++
				}
				if pt.torn {
					torn++
				}
			}
			// Both ends of the flow happen: the matrix is not vacuous.
			if seen[f.old] == 0 || seen[f.new] == 0 {
				t.Errorf("outcomes %v: want both %s and %s", seen, f.old, f.new)
			}
			points += len(pts)
			writes += n
			flows++
			t.Logf("%d cut points over %d flash writes, point of no return at write %d: %v", len(pts), n, ponr, seen)
		})
	}
	mode := "subset; " + powerCutEnv + "=all for every cut point"
	if all {
		mode = "every cut point"
	}
	t.Logf("power-cut matrix (%s): %d cut points (%d of them torn writes) over %d flows (%d flash writes): %d unbootable, %d wrong",
		mode, points, torn, flows, writes, unbootable, wrong)
}

// pcPoint is a cut point: the power is cut at write k (k = N+1: after the
// flow's last write), or in the middle of it (torn).
type pcPoint struct {
	k    int
	torn bool
}

// pcSample returns the cut points to run. all: every write, plus a torn
// cut at each that can tear (a data page, a temporary file, an erase), and
// the cut after the last write. Otherwise the subset: the writes that are
// not data pages, the first and last page of each file, and the cut after
// the last write.
func pcSample(writes []pcWrite, all bool) []pcPoint {
	var pts []pcPoint
	for i, w := range writes {
		k := i + 1
		first := i == 0 || !writes[i-1].Data || writes[i-1].Path != w.Path
		last := i == len(writes)-1 || !writes[i+1].Data || writes[i+1].Path != w.Path
		if all || !w.Data || first || last {
			pts = append(pts, pcPoint{k: k})
		}
		if all && (w.Data || strings.HasSuffix(w.Path, ".tmp") || w.Kind == "erase") {
			pts = append(pts, pcPoint{k: k, torn: true})
		}
	}
	return append(pts, pcPoint{k: len(writes) + 1})
}

// pcVerdict is the result of one cut point.
type pcVerdict int

const (
	pcOK pcVerdict = iota
	pcUnbootable
	pcWrong
)

// pcWrite is a flash write of a counted flow, with the boot state on flash
// before it (what a cut at it leaves).
type pcWrite struct {
	FlashWrite
	before BootState
}

// pcHarness holds what every run shares: templates and a bundle server.
type pcHarness struct {
	t         *testing.T
	srv       *httptest.Server
	bundles   map[string][]byte
	templates map[string]string
	known     map[string]map[string]bool // path in a filesystem -> sha256s of its whole versions
}

func newPCHarness(t *testing.T) *pcHarness {
	t.Helper()
	t.Cleanup(func() { goleak.VerifyNone(t, transporttest.LeakIgnores()...) })
	h := &pcHarness{t: t, bundles: map[string][]byte{}, templates: map[string]string{}, known: map[string]map[string]bool{}}
	// 2.0.0 has a 6-page app, so that updates and snapshots write many
	// pages; 9.0.0 is the update taken after each cut.
	h.bundles["/v2.zip"] = makeBundle(t, fw{version: "2.0.0", app: bytes.Repeat([]byte("app 2.0.0 page "), 6*PageSize/15)})
	h.bundles["/v9.zip"] = makeBundle(t, fw{version: "9.0.0"})
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, ok := h.bundles[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		http.ServeContent(w, r, "fw.zip", time.Time{}, bytes.NewReader(b))
	}))
	t.Cleanup(h.srv.Close)

	// factory: the factory firmware, plus files the user put in its
	// filesystem, which the first boot of an update carries over.
	factory := t.TempDir()
	d, err := New(Config{StateDir: factory})
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	for name, data := range map[string][]byte{
		"user.json":    []byte(`{"wifi": {"ssid": "home"}}`),
		"data/log.txt": bytes.Repeat([]byte("0123456789abcdef\n"), 2*PageSize/17+10), // 3 pages
		"empty.txt":    nil,
	} {
		p := filepath.Join(factory, "slot0", "fs", name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	h.templates["factory"] = factory

	// applied: 2.0.0 written to slot 1, its first boot pending.
	applied := h.copyFlash(t, factory)
	r := h.start(t, applied)
	if !r.call("OTA.Update", map[string]any{"url": h.url("/v2.zip"), "commit_timeout": 300}) {
		t.Fatal("no power cut expected")
	}
	r.close()
	h.templates["applied"] = applied

	// committed: 2.0.0 booted and committed.
	committed := h.copyFlash(t, applied)
	r = h.start(t, committed)
	if !r.call("OTA.Commit", nil) {
		t.Fatal("no power cut expected")
	}
	r.close()
	h.templates["committed"] = committed

	// The whole versions of every file: those of the templates' slots
	// (the user's files, the bundle's file part, the merged copies).
	for _, dir := range []string{factory, applied, committed} {
		for slot := 0; slot < DefaultSlots; slot++ {
			root := filepath.Join(dir, fmt.Sprintf("slot%d", slot), "fs")
			files, _ := listFiles(root)
			for _, rel := range files {
				h.addKnown(rel, filepath.Join(root, rel))
			}
		}
	}
	return h
}

func (h *pcHarness) addKnown(rel, path string) {
	_, _, s256, err := digestFile(path)
	if err != nil {
		h.t.Fatal(err)
	}
	if h.known[rel] == nil {
		h.known[rel] = map[string]bool{}
	}
	h.known[rel][s256] = true
}

func (h *pcHarness) url(path string) string { return h.srv.URL + path }

// copyFlash copies a template to a new state dir.
func (h *pcHarness) copyFlash(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		out := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(out, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(out, b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

// count runs the flow without a cut and returns its flash writes.
func (h *pcHarness) count(t *testing.T, f pcFlow) []pcWrite {
	t.Helper()
	dir := h.copyFlash(t, h.templates[f.template])
	var mu sync.Mutex
	var writes []pcWrite
	armed := false
	hook := func(w FlashWrite) error {
		mu.Lock()
		defer mu.Unlock()
		if armed {
			writes = append(writes, pcWrite{w, readBoot(t, dir)})
		}
		return nil
	}
	r := h.startFlow(t, f, dir, hook, func() { mu.Lock(); armed = true; mu.Unlock() })
	if r == nil {
		t.Fatal("the flow's boot failed without a power cut")
	}
	if f.run != nil {
		f.run(r)
	}
	if r.off() {
		t.Fatal("the device went off without a power cut")
	}
	r.close()
	mu.Lock()
	defer mu.Unlock()
	if len(writes) == 0 {
		t.Fatal("the flow wrote nothing")
	}
	return writes
}

// cutAt runs the flow with the power cut at pt, powers the device on
// again and checks it.
func (h *pcHarness) cutAt(t *testing.T, f pcFlow, writes []pcWrite, pt pcPoint, ponr int) (pcVerdict, pcOutcome) {
	t.Helper()
	k := pt.k
	dir := h.copyFlash(t, h.templates[f.template])
	n := len(writes)
	var mu sync.Mutex
	count, armed := 0, false
	var cut *FlashWrite
	hook := func(w FlashWrite) error {
		mu.Lock()
		defer mu.Unlock()
		if !armed {
			return nil
		}
		count++
		if count == k {
			cut = &w
			if pt.torn {
				return ErrTornWrite
			}
			return ErrPowerCut
		}
		return nil
	}
	where := fmt.Sprintf("cut after the flow's last write (%d)", n)
	if k <= n {
		how := "cut at"
		if pt.torn {
			how = "torn"
		}
		where = fmt.Sprintf("%s write %d of %d (%s %s)", how, k, n, writes[k-1].Kind, writes[k-1].Path)
	}
	r := h.startFlow(t, f, dir, hook, func() { mu.Lock(); armed = true; mu.Unlock() })
	if r != nil {
		if f.run != nil {
			f.run(r)
		}
		if k > n {
			if r.off() {
				t.Errorf("%s: the device went off by itself", where)
				return pcWrong, pcOutcome{}
			}
			r.d.PowerCut()
		}
		r.awaitOff(where)
		r.close()
	}
	mu.Lock()
	gotCut := cut
	mu.Unlock()
	if k <= n && (gotCut == nil || gotCut.Kind != writes[k-1].Kind || gotCut.Path != writes[k-1].Path) {
		t.Errorf("%s: the run cut at %+v: the flow's writes are not deterministic", where, gotCut)
		return pcWrong, pcOutcome{}
	}

	// Power on again from the same flash.
	before := BootState{}
	if k <= n {
		before = writes[k-1].before
	} else {
		before = readBoot(t, dir)
	}
	p := h.start(t, dir)
	if p == nil {
		t.Errorf("%s: the device does not boot", where)
		return pcUnbootable, pcOutcome{}
	}
	defer p.close()
	got, err := h.check(p, f, before, k > ponr)
	if err != nil {
		t.Errorf("%s: %v", where, err)
		return pcWrong, got
	}
	return pcOK, got
}

// check asserts everything a device must show after a power cut, then
// takes a new update.
func (h *pcHarness) check(p *pcRun, f pcFlow, before BootState, pastPONR bool) (pcOutcome, error) {
	s := p.d.State()
	if s.Bricked || !s.Online {
		return pcOutcome{}, fmt.Errorf("not running after power on: %+v", s)
	}
	var bs BootState
	if err := p.callInto("OTA.GetBootState", nil, &bs); err != nil {
		return pcOutcome{}, err
	}
	var info struct {
		Version string `json:"fw_version"`
		Slot    int    `json:"ota_slot"`
	}
	if err := p.callInto("Sys.GetInfo", nil, &info); err != nil {
		return pcOutcome{}, err
	}
	got := pcOutcome{slot: info.Slot, committed: bs.IsCommitted, version: info.Version}
	return got, h.checkRun(p, f, got, bs, s, before, pastPONR)
}

func (h *pcHarness) checkRun(p *pcRun, f pcFlow, got pcOutcome, bs BootState, s State, before BootState, pastPONR bool) error {
	var info struct {
		Version string `json:"fw_version"`
		Slot    int    `json:"ota_slot"`
	}

	// What runs: the old firmware, or the new one only past the point of
	// no return, and exactly what the flash said.
	switch {
	case got == f.old:
	case got == f.new && pastPONR:
	case got == f.new:
		return fmt.Errorf("runs %s before the point of no return", got)
	default:
		return fmt.Errorf("runs %s: neither the old firmware (%s) nor the new one (%s)", got, f.old, f.new)
	}
	want := pcOutcome{slot: before.ActiveSlot, committed: before.IsCommitted}
	if got.slot != want.slot || got.committed != want.committed {
		return fmt.Errorf("runs %s, but the boot state on flash was %+v", got, before)
	}

	// Every slot with a manifest is whole.
	fl := &flash{dir: p.dir, slots: DefaultSlots}
	for slot := 0; slot < DefaultSlots; slot++ {
		m, err := fl.loadManifest(slot)
		if err != nil {
			if slot == got.slot {
				return fmt.Errorf("the running slot %d: %w", slot, err)
			}
			continue
		}
		if slot == got.slot && m.Version != got.version {
			return fmt.Errorf("Sys.GetInfo says %s, slot %d holds %s", got.version, slot, m.Version)
		}
		if err := h.wholeSlot(fl, slot, m); err != nil {
			return err
		}
	}

	// The boot state is self-consistent.
	if bs.ActiveSlot != s.RunningSlot || s.RunningSlot != got.slot || !fl.validSlot(bs.RevertSlot) {
		return fmt.Errorf("boot state %+v, running slot %d, Sys.GetInfo slot %d", bs, s.RunningSlot, got.slot)
	}
	if bs.IsCommitted {
		if s.Persisted != bs || s.CommitTimerArmed {
			return fmt.Errorf("committed %+v, but on flash %+v, commit timer armed %v", bs, s.Persisted, s.CommitTimerArmed)
		}
	} else {
		tomb := BootState{ActiveSlot: bs.RevertSlot, IsCommitted: true, RevertSlot: bs.RevertSlot}
		if s.Persisted != tomb || s.CommitTimerArmed != (bs.CommitTimeout > 0) || bs.RevertSlot == bs.ActiveSlot {
			return fmt.Errorf("uncommitted %+v, but on flash %+v, commit timer armed %v", bs, s.Persisted, s.CommitTimerArmed)
		}
	}
	var st struct {
		State int `json:"state"`
	}
	if err := p.callInto("OTA.Status", nil, &st); err != nil || st.State != 0 {
		return fmt.Errorf("OTA.Status after power on: state %d (%v)", st.State, err)
	}

	// A new update afterwards: commit first if on trial, then update,
	// boot and commit 9.0.0.
	if !bs.IsCommitted && !p.call("OTA.Commit", nil) {
		return errors.New("power cut in OTA.Commit")
	}
	if !p.call("OTA.Update", map[string]any{"url": h.url("/v9.zip"), "commit_timeout": 300}) {
		return errors.New("the next update did not finish")
	}
	p.reboot()
	if err := p.callInto("Sys.GetInfo", nil, &info); err != nil || info.Version != "9.0.0" {
		return fmt.Errorf("after the next update: %+v (%v)", info, err)
	}
	if !p.call("OTA.Commit", nil) {
		return errors.New("the next update did not commit")
	}
	if err := p.callInto("OTA.GetBootState", nil, &bs); err != nil || !bs.IsCommitted || bs.ActiveSlot != info.Slot {
		return fmt.Errorf("after committing the next update: %+v (%v)", bs, err)
	}
	m, err := fl.loadManifest(info.Slot)
	if err != nil {
		return err
	}
	return h.wholeSlot(fl, info.Slot, m)
}

// wholeSlot checks every part of slot against its manifest, reading the
// data back from disk, and that every other file of its filesystem is a
// whole version of a file the flows know.
func (h *pcHarness) wholeSlot(fl *flash, slot int, m *bundle.Manifest) error {
	parts := map[string]bool{}
	for _, name := range m.PartNames() {
		part := m.Parts[name]
		if part.Src == "" {
			continue
		}
		path := fl.partPath(slot, name, part)
		size, s1, s256, err := digestFile(path)
		if err != nil {
			return fmt.Errorf("slot %d (%s) part %q: %w", slot, m.Version, name, err)
		}
		if part.Size == nil || part.CSSHA1 == "" || part.CSSHA256 == "" {
			return fmt.Errorf("slot %d (%s) part %q: the manifest lacks size or digests", slot, m.Version, name)
		}
		if err := bundle.CheckPart(name, part, size, s1, s256); err != nil {
			return fmt.Errorf("slot %d (%s): %w", slot, m.Version, err)
		}
		if part.Type == "file" {
			parts[part.Src] = true
		}
	}
	root := fl.fsDir(slot)
	files, err := listFiles(root)
	if err != nil {
		return err
	}
	for _, rel := range files {
		if parts[rel] {
			continue
		}
		_, _, s256, err := digestFile(filepath.Join(root, rel))
		if err != nil {
			return err
		}
		if !h.known[rel][s256] {
			return fmt.Errorf("slot %d (%s): file %s is not a whole version of any file (half-written?)", slot, m.Version, rel)
		}
	}
	return nil
}

func readBoot(t *testing.T, dir string) BootState {
	b, err := os.ReadFile(filepath.Join(dir, "bootstate.json"))
	if err != nil {
		t.Error(err)
	}
	var bs BootState
	json.Unmarshal(b, &bs)
	return bs
}

// pcRun is one powered-on device of the matrix.
type pcRun struct {
	h     *pcHarness
	t     *testing.T
	dir   string
	clock *ManualClock
	d     *Device
	c     *rpc.Client
	boots chan struct{} // a boot brought the device up

	closeOnce sync.Once
}

// start powers a device on from dir. It returns nil when the device does
// not boot.
func (h *pcHarness) start(t *testing.T, dir string) *pcRun {
	return h.startWith(t, dir, nil, nil)
}

// startFlow powers a device on from dir for flow f and arms the hook
// where the flow starts: before the boot when the boot is the flow, after
// it otherwise.
func (h *pcHarness) startFlow(t *testing.T, f pcFlow, dir string, hook func(FlashWrite) error, arm func()) *pcRun {
	t.Helper()
	if f.bootIsFlow {
		return h.startWith(t, dir, hook, arm)
	}
	r := h.startWith(t, dir, hook, nil)
	if r != nil {
		arm()
	}
	return r
}

// startWith powers a device on from dir; arm is called just before its
// boot when set (so that a flow that is the boot counts its writes). It
// returns nil when the boot fails.
func (h *pcHarness) startWith(t *testing.T, dir string, hook func(FlashWrite) error, arm func()) *pcRun {
	t.Helper()
	r := &pcRun{h: h, t: t, dir: dir, clock: NewManualClock(time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)), boots: make(chan struct{}, 16)}
	d, err := New(Config{StateDir: dir, Clock: r.clock, RebootAfter: 5 * time.Millisecond,
		Listeners: []Listener{bootWatch{r.boots}}, Hooks: Hooks{FlashWrite: hook}})
	if err != nil {
		t.Fatal(err)
	}
	r.d = d
	t.Cleanup(r.close) // also after a failed flow
	if arm != nil {
		arm()
	}
	if err := d.Start(context.Background()); err != nil {
		if !errors.Is(err, ErrPowerCut) {
			t.Logf("boot: %v", err)
		}
		d.Close()
		return nil
	}
	select {
	case <-r.boots:
	case <-d.Done():
		t.Logf("boot: the device went off")
		d.Close()
		return nil
	case <-time.After(waitLimit):
		t.Fatalf("the device did not come up: %+v", d.State())
	}
	r.c = rpc.NewClient(pipe.New(d.Handler()), rpc.ClientOptions{})
	return r
}

// call makes an RPC call; it returns false when the power was cut before
// the reply, and fails the test on any other error.
func (r *pcRun) call(method string, params any) bool {
	r.t.Helper()
	_, err := r.do(method, params)
	if r.off() {
		return false
	}
	if err != nil {
		r.t.Fatalf("%s: %v", method, err)
	}
	return true
}

func (r *pcRun) callInto(method string, params, out any) error {
	res, err := r.do(method, params)
	if err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	return json.Unmarshal(res, out)
}

// do calls method; the call ends when the device goes off for good.
func (r *pcRun) do(method string, params any) (json.RawMessage, error) {
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	go func() {
		select {
		case <-r.d.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	res, err := r.c.Call(ctx, method, params)
	var re *rpc.Error
	if errors.As(err, &re) && re.Code == 0 { // "Update applied, finalizing"
		err = nil
	}
	return res, err
}

// off reports whether the power is cut.
func (r *pcRun) off() bool {
	select {
	case <-r.d.Done():
		return true
	default:
		return false
	}
}

// reboot fires the reboot the device has scheduled and waits until it is
// up again (or off).
func (r *pcRun) reboot() {
	r.t.Helper()
	r.d.mu.Lock()
	at := r.d.rebootAt
	r.d.mu.Unlock()
	if at.IsZero() {
		r.t.Fatal("no reboot scheduled")
	}
	r.clock.Advance(at.Sub(r.clock.Now()))
	r.awaitBoot()
}

// awaitBoot waits until a boot brings the device up, or the power is cut.
func (r *pcRun) awaitBoot() {
	r.t.Helper()
	select {
	case <-r.boots:
	case <-r.d.Done():
	case <-time.After(waitLimit):
		r.t.Fatalf("the device did not come back: %+v", r.d.State())
	}
}

// awaitOff waits for the power cut.
func (r *pcRun) awaitOff(where string) {
	r.t.Helper()
	select {
	case <-r.d.Done():
	case <-time.After(waitLimit):
		r.t.Fatalf("%s: no power cut happened: %+v", where, r.d.State())
	}
}

func (r *pcRun) close() {
	r.closeOnce.Do(func() {
		if r.c != nil {
			r.c.Close()
		}
		r.d.Close()
	})
}

// bootWatch is a Listener that tells when the device comes up.
type bootWatch struct{ up chan<- struct{} }

func (b bootWatch) Start(context.Context, transport.Handler) error {
	select {
	case b.up <- struct{}{}:
	default:
	}
	return nil
}
func (bootWatch) Stop() error          { return nil }
func (bootWatch) Info() []ListenerInfo { return nil }
