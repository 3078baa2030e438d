package emulator

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/ota/bundle"
	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport/pipe"
)

// push sends b through OTA.Begin/Write/End in chunks, as mos does.
func (e *env) push(b []byte, chunk int, commitTimeout int) error {
	e.t.Helper()
	if _, err := e.call("OTA.Begin", map[string]any{"timeout": 600, "commit_timeout": commitTimeout, "size": len(b)}); err != nil {
		return err
	}
	for off := 0; off < len(b); off += chunk {
		end := min(off+chunk, len(b))
		p := map[string]any{"offset": off, "data": base64.StdEncoding.EncodeToString(b[off:end])}
		if off == chunk {
			var st map[string]any
			json.Unmarshal(e.mustCall("OTA.Status", nil), &st)
			if st["state"] != 1.0 || st["progress_percent"].(float64) <= 0 {
				e.t.Errorf("status during push: %v", st)
			}
		}
		if _, err := e.call("OTA.Write", p); err != nil {
			return err
		}
	}
	_, err := e.call("OTA.End", nil)
	return err
}

func TestPush(t *testing.T) {
	for _, chunk := range []int{512, 2900} {
		t.Run(fmt.Sprint(chunk), func(t *testing.T) {
			e := newEnv(t, nil)
			b := makeBundle(t, fw{version: "2.0.0"})
			// The frame of a full chunk fits the device's frame limit.
			fr, _ := frame.Marshal(&frame.Frame{ID: 1 << 41, Src: "otactl", Method: "OTA.Write",
				Params: json.RawMessage(fmt.Sprintf(`{"offset":%d,"data":%q}`, len(b), base64.StdEncoding.EncodeToString(b[:chunk])))})
			if len(fr) > frame.MaxSize {
				t.Fatalf("chunk %d makes a %d-byte frame", chunk, len(fr))
			}
			if err := e.push(b, chunk, 300); err != nil {
				t.Fatal(err)
			}
			e.waitBoots(2)
			if bs := e.bootState(); bs != uncommit1 {
				t.Fatalf("%+v", bs)
			}
			if v := e.info()["fw_version"]; v != "2.0.0" {
				t.Fatal(v)
			}
			e.mustCall("OTA.Commit", nil)
			if bs := e.bootState(); !bs.IsCommitted || bs.ActiveSlot != 1 {
				t.Fatalf("%+v", bs)
			}
		})
	}
}

func TestPushErrors(t *testing.T) {
	e := newEnv(t, nil)
	b := makeBundle(t, fw{version: "2.0.0"})
	e.mustCall("OTA.Begin", map[string]any{"size": len(b)})
	_, err := e.call("OTA.Begin", map[string]any{"size": len(b)})
	wantErr(t, err, -1, "Failed to init updater")
	e.mustCall("OTA.Write", map[string]any{"offset": 0, "data": base64.StdEncoding.EncodeToString(b[:100])})
	_, err = e.call("OTA.Write", map[string]any{"offset": 0, "data": base64.StdEncoding.EncodeToString(b[:100])})
	wantErr(t, err, -1, "Wrong offset 0, expected 100")
	_, err = e.call("OTA.Write", map[string]any{"offset": 100, "data": "!!not base64"})
	wantErr(t, err, -1, "Malformed request")
	_, err = e.call("OTA.Write", map[string]any{"offset": 100})
	wantErr(t, err, -1, "Malformed request")
	// End before the whole bundle: the archive is truncated.
	_, err = e.call("OTA.End", nil)
	wantErr(t, err, -1, "Malformed archive (truncated)")
	var st map[string]any
	json.Unmarshal(e.mustCall("OTA.Status", nil), &st)
	if st["state"] != 2.0 || st["msg"] != "Malformed archive (truncated)" {
		t.Fatalf("status %v", st)
	}
	if bs := e.bootState(); bs != committed0 {
		t.Fatalf("%+v", bs)
	}
	// A compressed bundle is refused mid-stream; then a good push works.
	bad := append([]byte(nil), b...)
	bad[8] = 8
	e.mustCall("OTA.Begin", map[string]any{"size": len(bad)})
	_, err = e.call("OTA.Write", map[string]any{"offset": 0, "data": base64.StdEncoding.EncodeToString(bad[:2000])})
	wantErr(t, err, -1, "Cannot handle compressed .zip")
	if err := e.push(b, 2900, 0); err != nil {
		t.Fatal(err)
	}
	e.waitBoots(2)
	if bs := e.bootState(); bs != (BootState{ActiveSlot: 1, IsCommitted: true}) {
		t.Fatalf("%+v", bs)
	}
}

// Power cuts at flash writes during an update and its finalisation leave
// the old firmware booting, committed; a cut after the boot state was
// written boots the new one uncommitted (its first boot).
func TestPowerCut(t *testing.T) {
	b := makeBundle(t, fw{version: "2.0.0"})
	cases := []struct {
		name        string
		n           int
		kinds       []string
		wantVersion string
		wantBoot    BootState
	}{
		{"erase", 1, []string{"erase"}, "1.0.0", committed0},
		{"first part chunk", 1, []string{"part"}, "1.0.0", committed0},
		{"later part chunk", 3, []string{"part"}, "1.0.0", committed0},
		{"manifest", 1, []string{"manifest"}, "1.0.0", committed0},
		{"boot state temp file", 1, []string{"bootstate"}, "1.0.0", committed0},
		{"boot state rename", 1, []string{"bootstate-commit"}, "1.0.0", committed0},
		// The second boot-state write is the first-boot tombstone: the
		// power dies before it, so the next boot is the first boot again.
		{"tombstone", 2, []string{"bootstate"}, "2.0.0", uncommit1},
		// The third is the commit timer's revert... here: a cut at the fs
		// merge of the first boot, after the tombstone: old firmware.
		{"fs merge", 1, []string{"fs"}, "1.0.0", committed0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var armed atomic.Bool
			cut := PowerCutAt(c.n, c.kinds...)
			e := newEnv(t, func(cfg *Config) {
				cfg.Hooks.FlashWrite = func(w FlashWrite) error {
					if armed.Load() {
						return cut(w)
					}
					return nil
				}
			})
			armed.Store(true)
			go e.call("OTA.Update", map[string]any{"url": e.serve("/fw.zip", b), "commit_timeout": 300})
			e.waitDone("no power cut")
			armed.Store(false)
			e.start(nil)
			if bs := e.bootState(); bs != c.wantBoot {
				t.Fatalf("after power on: %+v, want %+v", bs, c.wantBoot)
			}
			if v := e.info()["fw_version"]; v != c.wantVersion {
				t.Fatalf("running %v, want %s", v, c.wantVersion)
			}
		})
	}
}

// A 64 MiB bundle updates with the emulator's heap staying far below the
// bundle size.
func TestLargeBundleHeap(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 64 MiB twice")
	}
	e := newEnv(t, nil)
	const size = 64 << 20
	gen := func() (io.ReadCloser, error) {
		return io.NopCloser(io.LimitReader(&patternReader{}, size)), nil
	}
	path := filepath.Join(t.TempDir(), "big.zip")
	m := &bundle.Manifest{Name: "big", Platform: "esp32", Version: "9.9.9", BuildID: "big"}
	if err := bundle.CreateFile(path, m, []bundle.PartData{{Name: "app", Part: bundle.Part{Type: "app", Src: "app.bin"}, Open: gen}}, nil); err != nil {
		t.Fatal(err)
	}
	e.setHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, path) }))

	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	_, err := e.call("OTA.Update", map[string]any{"url": e.srv.URL + "/big.zip", "commit_timeout": 60})
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	growth := int64(peak.Load()) - int64(base.HeapInuse)
	t.Logf("heap in use: base %d KiB, peak %d KiB, growth %d KiB", base.HeapInuse>>10, peak.Load()>>10, growth>>10)
	if peak.Load() > 16<<20 || growth > 8<<20 {
		t.Fatalf("peak heap %d bytes (growth %d) for a %d-byte bundle", peak.Load(), growth, size)
	}
	e.waitBoots(2)
	if v := e.info()["fw_version"]; v != "9.9.9" {
		t.Fatal(v)
	}
	// The part on flash is the whole 64 MiB, read back and checked.
	st, err := os.Stat(filepath.Join(e.dir, "slot1", "parts", "app"))
	if err != nil || st.Size() != size {
		t.Fatalf("part on flash: %v %v", st, err)
	}
}

// patternReader yields a deterministic, not trivially compressible stream.
type patternReader struct{ n uint64 }

func (p *patternReader) Read(b []byte) (int, error) {
	for i := range b {
		p.n++
		b[i] = byte(p.n*2654435761>>13) ^ byte(p.n>>8)
	}
	return len(b), nil
}

// status returns OTA.Status as a map.
func (e *env) status() map[string]any {
	e.t.Helper()
	var st map[string]any
	if err := json.Unmarshal(e.mustCall("OTA.Status", nil), &st); err != nil {
		e.t.Fatal(err)
	}
	return st
}

// write sends OTA.Write of b[off:end].
func (e *env) write(b []byte, off, end int) error {
	e.t.Helper()
	_, err := e.call("OTA.Write", map[string]any{"offset": off, "data": base64.StdEncoding.EncodeToString(b[off:end])})
	return err
}

// waitEarly waits until n writes wait for a gap in the running push.
func (e *env) waitEarly(n int) {
	e.t.Helper()
	deadline := time.Now().Add(waitLimit)
	for {
		e.d.mu.Lock()
		u := e.d.upd
		e.d.mu.Unlock()
		got := -1
		if u != nil {
			u.pmu.Lock()
			got = u.waiting
			u.pmu.Unlock()
		}
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%d writes wait for a gap, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// While a push runs, OTA.Status says which offset the next write must
// carry; a client that lost its link resumes there.
func TestPushStatusOffset(t *testing.T) {
	e := newEnv(t, nil)
	b := makeBundle(t, fw{version: "2.0.0"})
	if _, ok := e.status()["offset"]; ok {
		t.Fatal("offset reported with no push running")
	}
	e.mustCall("OTA.Begin", map[string]any{"size": len(b)})
	if st := e.status(); st["offset"] != 0.0 || st["state"] != 1.0 {
		t.Fatalf("status after Begin: %v", st)
	}
	if err := e.write(b, 0, 1000); err != nil {
		t.Fatal(err)
	}
	if st := e.status(); st["offset"] != 1000.0 {
		t.Fatalf("status after 1000 bytes: %v", st)
	}
	// A write elsewhere is refused, naming the offset the device expects.
	wantErr(t, e.write(b, 500, 1500), -1, "Wrong offset 500, expected 1000")
	wantErr(t, e.write(b, 0, 1000), -1, "Wrong offset 0, expected 1000")
	if st := e.status(); st["offset"] != 1000.0 || st["state"] != 1.0 {
		t.Fatalf("status after refused writes: %v", st)
	}
	// The rest, by a new client (the first one lost its link).
	e.c.Close()
	e.c = rpc.NewClient(pipe.New(e.d.Handler()), rpc.ClientOptions{})
	t.Cleanup(func() { e.c.Close() })
	for off := 1000; off < len(b); off += 2900 {
		if err := e.write(b, off, min(off+2900, len(b))); err != nil {
			t.Fatal(err)
		}
	}
	e.mustCall("OTA.End", nil)
	e.waitBoots(2)
	if _, ok := e.status()["offset"]; ok {
		t.Fatal("offset reported after the push")
	}
	if v := e.info()["fw_version"]; v != "2.0.0" {
		t.Fatal(v)
	}
}

// Writes that arrive ahead of a gap (the transports handle frames
// concurrently, so a client's writes in flight may be processed out of
// order) wait for it to be filled, and then are processed in order.
func TestPushWriteAheadOfGapWaits(t *testing.T) {
	e := newEnv(t, nil)
	b := makeBundle(t, fw{version: "2.0.0"})
	e.mustCall("OTA.Begin", map[string]any{"size": len(b)})
	errs := make(chan error, 2)
	go func() { errs <- e.write(b, 2000, 3000) }()
	e.waitEarly(1)
	go func() { errs <- e.write(b, 1000, 2000) }()
	e.waitEarly(2)
	if st := e.status(); st["offset"] != 0.0 {
		t.Fatalf("early writes were processed: %v", st)
	}
	if err := e.write(b, 0, 1000); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if st := e.status(); st["offset"] != 3000.0 {
		t.Fatalf("status: %v", st)
	}
	for off := 3000; off < len(b); off += 2900 {
		if err := e.write(b, off, min(off+2900, len(b))); err != nil {
			t.Fatal(err)
		}
	}
	e.mustCall("OTA.End", nil)
	e.waitBoots(2)
	if v := e.info()["fw_version"]; v != "2.0.0" {
		t.Fatal(v)
	}
}

// A gap that stays open is refused after reorderWait of device time with
// the offset the device expects, so the client resends from there; the
// push stays alive.
func TestPushGapRefusedAfterWait(t *testing.T) {
	e := newEnv(t, nil)
	b := makeBundle(t, fw{version: "2.0.0"})
	e.mustCall("OTA.Begin", map[string]any{"size": len(b)})
	if err := e.write(b, 0, 1000); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 1)
	go func() { errs <- e.write(b, 2000, 3000) }()
	e.waitEarly(1)
	e.clock.Advance(reorderWait - time.Millisecond)
	select {
	case err := <-errs:
		t.Fatalf("refused before reorderWait: %v", err)
	default:
	}
	e.clock.Advance(time.Millisecond)
	wantErr(t, <-errs, -1, "Wrong offset 2000, expected 1000")
	if st := e.status(); st["offset"] != 1000.0 || st["state"] != 1.0 {
		t.Fatalf("status: %v", st)
	}
	if err := e.write(b, 1000, 2000); err != nil {
		t.Fatal(err)
	}
}

// A write waits for as long as the write before it is being processed (a
// slow flash), however long that is; only then does reorderWait count.
func TestPushEarlyWriteWaitsForSlowWrite(t *testing.T) {
	release := make(chan struct{})
	var blocked atomic.Bool
	entered := make(chan struct{})
	e := newEnv(t, func(cfg *Config) {
		cfg.Hooks.FlashWrite = func(w FlashWrite) error {
			if w.Kind == "part" && blocked.CompareAndSwap(false, true) {
				close(entered)
				<-release
			}
			return nil
		}
	})
	app := bytes.Repeat([]byte("x"), 20000)
	b := makeBundle(t, fw{version: "2.0.0", app: app})
	e.mustCall("OTA.Begin", map[string]any{"size": len(b)})
	// The updater takes the first write and blocks writing the part to
	// flash; the second write is then stuck handing its data over.
	if err := e.write(b, 0, 8000); err != nil {
		t.Fatal(err)
	}
	<-entered
	slow := make(chan error, 1)
	go func() { slow <- e.write(b, 8000, 9000) }()
	e.waitUntil("the second write to be processed", func(State) bool {
		e.d.mu.Lock()
		u := e.d.upd
		e.d.mu.Unlock()
		u.pmu.Lock()
		defer u.pmu.Unlock()
		return u.busy
	})
	early := make(chan error, 1)
	go func() { early <- e.write(b, 9000, 10000) }()
	e.waitEarly(1)
	e.clock.Advance(10 * reorderWait)
	select {
	case err := <-early:
		t.Fatalf("the early write gave up while the one before it was processed: %v", err)
	default:
	}
	close(release)
	if err := <-slow; err != nil {
		t.Fatal(err)
	}
	if err := <-early; err != nil {
		t.Fatal(err)
	}
	if st := e.status(); st["offset"] != 10000.0 {
		t.Fatalf("status: %v", st)
	}
}

// An interrupted push lives on with nobody connected, until its watchdog
// fires; then writes are refused with the reason.
func TestPushAbandonedEndsAtWatchdog(t *testing.T) {
	e := newEnv(t, nil)
	b := makeBundle(t, fw{version: "2.0.0"})
	e.mustCall("OTA.Begin", map[string]any{"size": len(b), "timeout": 30})
	if err := e.write(b, 0, 1000); err != nil {
		t.Fatal(err)
	}
	e.c.Close()
	e.clock.Advance(29 * time.Second)
	e.c = rpc.NewClient(pipe.New(e.d.Handler()), rpc.ClientOptions{})
	t.Cleanup(func() { e.c.Close() })
	if st := e.status(); st["state"] != 1.0 || st["offset"] != 1000.0 {
		t.Fatalf("status before the watchdog: %v", st)
	}
	e.clock.Advance(time.Second)
	e.waitUntil("the update to end", func(s State) bool { return s.OTAState == 2 })
	st := e.status()
	if st["state"] != 2.0 || st["msg"] != "Update timed out" {
		t.Fatalf("status after the watchdog: %v", st)
	}
	if _, ok := st["offset"]; ok {
		t.Fatalf("offset reported after the push ended: %v", st)
	}
	wantErr(t, e.write(b, 1000, 2000), -1, "Update timed out")
	if bs := e.bootState(); bs != committed0 {
		t.Fatalf("%+v", bs)
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
