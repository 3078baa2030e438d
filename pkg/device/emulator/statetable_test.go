package emulator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/ota/bundle"
	"github.com/otactl/otactl/pkg/rpc"
)

var (
	committed0 = BootState{ActiveSlot: 0, IsCommitted: true, RevertSlot: 0}
	uncommit1  = BootState{ActiveSlot: 1, IsCommitted: false, RevertSlot: 0, CommitTimeout: 300}
)

// TestStateTable walks the rows of docs/protocol.md, "State table": each row puts
// the device in a state, applies the event, and checks the reply, the boot
// state, and what boots next.
func TestStateTable(t *testing.T) {
	type row struct {
		name  string
		state string // "IDLE_C" or "IDLE_U" (2.0.0 in slot 1, uncommitted, ct 300)
		event func(e *env) error
		// wantCode/wantMsg: the reply (code 0: success).
		wantCode int
		wantMsg  string
		wantBoot BootState
		// nextVersion is what runs after the next boot (reboot forced
		// unless the event already rebooted: rebooted).
		nextVersion string
		rebooted    bool
	}
	upd := func(f fw, ct int) func(e *env) error {
		return func(e *env) error {
			_, err := e.call("OTA.Update", map[string]any{"url": e.serve("/x.zip", makeBundle(e.t, f)), "commit_timeout": ct})
			return err
		}
	}
	begin := func(e *env) error {
		_, err := e.call("OTA.Begin", map[string]any{"size": 1000})
		return err
	}
	rows := []row{
		{name: "IDLE_C+Update", state: "IDLE_C", event: upd(fw{version: "2.0.0"}, 300), wantMsg: "",
			wantBoot: uncommit1, nextVersion: "2.0.0", rebooted: true},
		{name: "IDLE_U+Update", state: "IDLE_U", event: upd(fw{version: "3.0.0"}, 0), wantCode: -1, wantMsg: "Failed to init updater",
			wantBoot: uncommit1, nextVersion: "1.0.0"},
		{name: "IDLE_U+Begin", state: "IDLE_U", event: begin, wantCode: -1, wantMsg: "Failed to init updater",
			wantBoot: uncommit1, nextVersion: "1.0.0"},
		{name: "UPD+bad manifest", state: "IDLE_C", event: upd(fw{version: "2.0.0", edit: func(m *bundle.Manifest) { m.BuildID = "" }}, 0),
			wantCode: -1, wantMsg: "Required manifest field missing", wantBoot: committed0, nextVersion: "1.0.0"},
		{name: "UPD+CRC", state: "IDLE_C", event: func(e *env) error {
			b := makeBundle(e.t, fw{version: "2.0.0"})
			b[len(b)/2] ^= 0xff
			_, err := e.call("OTA.Update", map[string]any{"url": e.serve("/crc.zip", b)})
			return err
		}, wantCode: -1, wantMsg: "Invalid CRC", wantBoot: committed0, nextVersion: "1.0.0"},
		{name: "UPD+platform", state: "IDLE_C", event: upd(fw{version: "2.0.0", platform: "esp8266"}, 0),
			wantCode: -1, wantMsg: "Wrong platform", wantBoot: committed0, nextVersion: "1.0.0"},
		{name: "UPD+digest", state: "IDLE_C", event: upd(fw{version: "2.0.0", edit: func(m *bundle.Manifest) { m.Parts["app"].CSSHA1 = "0000000000000000000000000000000000000000" }}, 0),
			wantCode: -1, wantMsg: "Digest mismatch", wantBoot: committed0, nextVersion: "1.0.0"},
		{name: "UPD+HTTP error", state: "IDLE_C", event: func(e *env) error {
			_, err := e.call("OTA.Update", map[string]any{"url": e.srv.URL + "/missing.zip"})
			return err
		}, wantCode: -1, wantMsg: "Invalid HTTP response code 404", wantBoot: committed0, nextVersion: "1.0.0"},
		{name: "UPD+watchdog", state: "IDLE_C", event: func(e *env) error {
			_, err := e.call("OTA.Begin", map[string]any{"size": 1000, "timeout": 30})
			if err != nil {
				return err
			}
			e.clock.Advance(30 * time.Second)
			_, err = e.call("OTA.Write", map[string]any{"offset": 0, "data": "AAAA"})
			return err
		}, wantCode: -1, wantMsg: "Update timed out", wantBoot: committed0, nextVersion: "1.0.0"},
		{name: "DONE+boot ct=0", state: "IDLE_C", event: upd(fw{version: "2.0.0"}, 0),
			wantBoot: BootState{ActiveSlot: 1, IsCommitted: true}, nextVersion: "2.0.0", rebooted: true},
		{name: "IDLE_U+Commit", state: "IDLE_U", event: func(e *env) error { _, err := e.call("OTA.Commit", nil); return err },
			wantBoot: BootState{ActiveSlot: 1, IsCommitted: true}, nextVersion: "2.0.0"},
		{name: "IDLE_U+timer", state: "IDLE_U", event: func(e *env) error {
			e.clock.Advance(300 * time.Second)
			e.waitBoots(3)
			return nil
		}, wantBoot: committed0, nextVersion: "1.0.0", rebooted: true},
		{name: "IDLE_U+reboot", state: "IDLE_U", event: func(e *env) error {
			_, err := e.call("Sys.Reboot", nil)
			e.waitBoots(3)
			return err
		}, wantBoot: committed0, nextVersion: "1.0.0", rebooted: true},
		{name: "IDLE_U+power loss", state: "IDLE_U", event: func(e *env) error {
			e.d.PowerCut()
			<-e.d.Done()
			e.start(nil)
			return nil
		}, wantBoot: committed0, nextVersion: "1.0.0"},
		{name: "IDLE_U+Revert", state: "IDLE_U", event: func(e *env) error {
			_, err := e.call("OTA.Revert", nil)
			e.waitBoots(3)
			return err
		}, wantBoot: committed0, nextVersion: "1.0.0", rebooted: true},
		{name: "IDLE_C+Commit", state: "IDLE_C", event: func(e *env) error { _, err := e.call("OTA.Commit", nil); return err },
			wantCode: -1, wantBoot: committed0, nextVersion: "1.0.0"},
		{name: "IDLE_C+Revert", state: "IDLE_C", event: func(e *env) error { _, err := e.call("OTA.Revert", nil); return err },
			wantCode: -1, wantBoot: committed0, nextVersion: "1.0.0"},
		{name: "IDLE_C+CreateSnapshot", state: "IDLE_C", event: func(e *env) error {
			var r struct{ Slot int }
			res, err := e.call("OTA.CreateSnapshot", nil)
			if err == nil {
				json.Unmarshal(res, &r)
				if r.Slot != 1 {
					return fmt.Errorf("snapshot slot %d", r.Slot)
				}
			}
			return err
		}, wantBoot: committed0, nextVersion: "1.0.0"},
		{name: "IDLE_C+CreateSnapshot set_as_revert", state: "IDLE_C", event: func(e *env) error {
			_, err := e.call("OTA.CreateSnapshot", map[string]any{"set_as_revert": true, "commit_timeout": "60"})
			return err
		}, wantBoot: BootState{ActiveSlot: 0, IsCommitted: false, RevertSlot: 1, CommitTimeout: 60}, nextVersion: "1.0.0"},
		{name: "IDLE_U+CreateSnapshot", state: "IDLE_U", event: func(e *env) error { _, err := e.call("OTA.CreateSnapshot", nil); return err },
			wantCode: -1, wantMsg: "Cannot create snapshots in uncommitted state", wantBoot: uncommit1, nextVersion: "1.0.0"},
		{name: "IDLE_C+SetBootState none", state: "IDLE_C", event: func(e *env) error { _, err := e.call("OTA.SetBootState", map[string]any{}); return err },
			wantCode: -2, wantBoot: committed0, nextVersion: "1.0.0"},
		{name: "IDLE_C+SetBootState bad slot", state: "IDLE_C", event: func(e *env) error {
			_, err := e.call("OTA.SetBootState", map[string]any{"active_slot": 7, "commit_timeout": 5})
			return err
		}, wantCode: -3, wantBoot: committed0, nextVersion: "1.0.0"},
		{name: "IDLE_U+SetBootState merge", state: "IDLE_U", event: func(e *env) error {
			_, err := e.call("OTA.SetBootState", map[string]any{"is_committed": true, "commit_timeout": "0x10"})
			return err
		}, wantBoot: BootState{ActiveSlot: 1, IsCommitted: true, RevertSlot: 0, CommitTimeout: 16}, nextVersion: "2.0.0"},
		{name: "IDLE_C+SetBootState active 1", state: "IDLE_U", event: func(e *env) error {
			// From IDLE_U: commit, then point the next boot at slot 0.
			if _, err := e.call("OTA.Commit", nil); err != nil {
				return err
			}
			_, err := e.call("OTA.SetBootState", map[string]any{"active_slot": "0"})
			return err
		}, wantBoot: BootState{ActiveSlot: 0, IsCommitted: true, RevertSlot: 0}, nextVersion: "1.0.0"},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			e := newEnv(t, nil)
			if r.state == "IDLE_U" {
				e.update(fw{version: "2.0.0"}, 300)
				if bs := e.bootState(); bs != uncommit1 {
					t.Fatalf("setup: %+v", bs)
				}
			}
			boots := e.d.State().Boots
			err := r.event(e)
			if r.wantCode == 0 {
				var re *rpc.Error
				if err != nil && !(errors.As(err, &re) && re.Code == 0) {
					t.Fatalf("reply: %v", err)
				}
			} else {
				wantErr(t, err, r.wantCode, r.wantMsg)
			}
			if r.rebooted {
				e.waitBoots(boots + 1)
			}
			if bs := e.bootState(); bs != r.wantBoot {
				t.Fatalf("boot state %+v, want %+v", bs, r.wantBoot)
			}
			if !r.rebooted {
				// The device keeps answering, then the next boot.
				boots = e.d.State().Boots
				e.d.Reboot()
				e.waitBoots(boots + 1)
			}
			if v := e.info()["fw_version"]; v != r.nextVersion {
				t.Fatalf("next boot runs %v, want %s", v, r.nextVersion)
			}
		})
	}
}

// UPD + Update/Begin: busy.
func TestBusy(t *testing.T) {
	e := newEnv(t, nil)
	release := make(chan struct{})
	b := makeBundle(t, fw{version: "2.0.0"})
	e.setHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(len(b)))
		w.Write(b[:len(b)/2])
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		w.Write(b[len(b)/2:])
	}))
	done := make(chan error, 1)
	go func() {
		_, err := e.call("OTA.Update", map[string]any{"url": e.srv.URL + "/slow.zip"})
		done <- err
	}()
	e.waitUntil("update in progress", func(s State) bool { return s.OTAState == 1 && s.OTAProgress > 10 })
	var st map[string]any
	json.Unmarshal(e.mustCall("OTA.Status", nil), &st)
	if st["state"] != 1.0 || st["progress_percent"].(float64) < 1 {
		t.Fatalf("status during update: %v", st)
	}
	_, err := e.call("OTA.Update", map[string]any{"url": e.srv.URL + "/slow.zip"})
	wantErr(t, err, -1, "Failed to init updater")
	_, err = e.call("OTA.Begin", nil)
	wantErr(t, err, -1, "Failed to init updater")
	_, err = e.call("OTA.CreateSnapshot", nil)
	wantErr(t, err, -1, "Failed to create snapshot")
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	e.waitBoots(2)
	if bs := e.bootState(); bs != (BootState{ActiveSlot: 1, RevertSlot: 0, IsCommitted: true}) {
		t.Fatalf("%+v", bs)
	}
}

// Every error message of docs/protocol.md, "Methods", not covered by the
// table.
func TestErrorMessages(t *testing.T) {
	e := newEnv(t, nil)
	_, err := e.call("OTA.Update", nil)
	wantErr(t, err, -1, "Malformed request")
	_, err = e.call("OTA.Update", map[string]any{"url": 5})
	wantErr(t, err, -1, "Malformed request")
	_, err = e.call("OTA.Write", map[string]any{"offset": 0, "data": ""})
	wantErr(t, err, -1, "Update not started")
	_, err = e.call("OTA.End", nil)
	wantErr(t, err, -1, "Update not started")
	_, err = e.call("OTA.Update", map[string]any{"url": e.serve("/bad.zip", makeBundle(t, fw{version: "2", edit: func(m *bundle.Manifest) { m.Parts["app"].Src = "../app.bin" }}))})
	wantErr(t, err, -1, "Invalid part src")
	// After a failed update, Write reports why.
	_, err = e.call("OTA.Write", map[string]any{"offset": 0, "data": ""})
	wantErr(t, err, -1, "Invalid part src")
	if bs := e.bootState(); bs != committed0 {
		t.Fatalf("%+v", bs)
	}
}

// Flash write failures produce the snapshot and SetBootState error codes.
func TestFlashFailureCodes(t *testing.T) {
	var fail func(FlashWrite) error
	e := newEnv(t, func(c *Config) {
		c.Hooks.FlashWrite = func(w FlashWrite) error {
			if fail != nil {
				return fail(w)
			}
			return nil
		}
	})
	failKind := func(kind string) func(FlashWrite) error {
		return func(w FlashWrite) error {
			if w.Kind == kind {
				return errors.New("flash write failed")
			}
			return nil
		}
	}
	fail = failKind("part")
	_, err := e.call("OTA.CreateSnapshot", nil)
	wantErr(t, err, -1, "Failed to create snapshot")
	fail = failKind("bootstate")
	_, err = e.call("OTA.CreateSnapshot", map[string]any{"set_as_revert": true})
	wantErr(t, err, -3, "Failed to set boot state")
	_, err = e.call("OTA.CreateSnapshot", map[string]any{"set_as_revert": true, "commit_timeout": 5})
	wantErr(t, err, -4, "Failed to set commit timeout")
	_, err = e.call("OTA.SetBootState", map[string]any{"commit_timeout": 5})
	wantErr(t, err, -4, "")
	fail = nil
	if bs := e.bootState(); bs != committed0 {
		t.Fatalf("%+v", bs)
	}
}

// The firmware-behaviour attribute.
func TestFirmwareBehaviour(t *testing.T) {
	t.Run("crash_on_boot", func(t *testing.T) {
		e := newEnv(t, nil)
		e.update(fw{version: "2.0.0", behavior: BehaviorCrashOnBoot}, 300)
		if bs := e.bootState(); bs != committed0 {
			t.Fatalf("%+v", bs)
		}
		if v := e.info()["fw_version"]; v != "1.0.0" {
			t.Fatalf("running %v", v)
		}
	})
	t.Run("no_rpc", func(t *testing.T) {
		e := newEnv(t, nil)
		e.update(fw{version: "2.0.0", behavior: BehaviorNoRPC}, 300)
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		_, err := e.c.Call(ctx, "Sys.GetInfo", nil)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("no_rpc firmware answered: %v", err)
		}
		e.waitUntil("commit timer", func(s State) bool { return s.CommitTimerArmed })
		e.clock.Advance(300 * time.Second)
		e.waitBoots(3)
		if v := e.info()["fw_version"]; v != "1.0.0" {
			t.Fatalf("running %v", v)
		}
	})
}

func TestHTTPDownloadCases(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxRedirects = 3 })
	b := makeBundle(t, fw{version: "2.0.0"})
	e.serve("/fw.zip", b)
	mux := http.NewServeMux()
	mux.HandleFunc("/loop", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/loop", http.StatusFound) })
	mux.HandleFunc("/redir", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/fw.zip", http.StatusMovedPermanently)
	})
	mux.HandleFunc("/304", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNotModified) })
	mux.HandleFunc("/short", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(len(b)))
		w.Write(b[:len(b)/2])
	})
	mux.HandleFunc("/fw.zip", func(w http.ResponseWriter, r *http.Request) { w.Write(b) })
	e.setHandler(mux)
	_, err := e.call("OTA.Update", map[string]any{"url": e.srv.URL + "/loop"})
	wantErr(t, err, -1, "Update failed")
	_, err = e.call("OTA.Update", map[string]any{"url": e.srv.URL + "/short"})
	wantErr(t, err, -1, "Update failed")
	_, err = e.call("OTA.Update", map[string]any{"url": e.srv.URL + "/304"})
	if err != nil {
		t.Fatalf("304: %v", err)
	}
	if bs := e.bootState(); bs != committed0 {
		t.Fatalf("%+v", bs)
	}
	_, err = e.call("OTA.Update", map[string]any{"url": e.srv.URL + "/redir", "commit_timeout": "300"})
	if err != nil {
		t.Fatal(err)
	}
	e.waitBoots(2)
	if bs := e.bootState(); bs != uncommit1 {
		t.Fatalf("%+v", bs)
	}
}

// The watchdog aborts a download that makes no progress.
func TestDownloadWatchdog(t *testing.T) {
	e := newEnv(t, nil)
	b := makeBundle(t, fw{version: "2.0.0"})
	e.setHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(len(b)))
		w.Write(b[:len(b)/2])
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	done := make(chan error, 1)
	go func() {
		_, err := e.call("OTA.Update", map[string]any{"url": e.srv.URL + "/stall.zip", "timeout": "0x3c"})
		done <- err
	}()
	// Wait until the device has read all the server sent: a read after
	// the clock moved would re-arm the watchdog (progress).
	half := len(b) / 2 * 100 / len(b)
	e.waitUntil("download stalled", func(s State) bool { return s.OTAState == 1 && s.OTAProgress >= half })
	e.clock.Advance(59 * time.Second)
	if s := e.d.State(); s.OTAState != 1 {
		t.Fatalf("aborted early: %+v", s)
	}
	e.clock.Advance(time.Second)
	wantErr(t, <-done, -1, "Update timed out")
	if bs := e.bootState(); bs != committed0 {
		t.Fatalf("%+v", bs)
	}
}

// Two parts naming the same src (issue 7, defect 6): the device refuses
// the bundle with the reason `otactl bundle verify` gives, before it
// touches the spare slot or the boot state, and takes the next update.
func TestDuplicateSrcRefused(t *testing.T) {
	var writes atomic.Int32
	e := newEnv(t, func(c *Config) { c.Hooks.FlashWrite = func(FlashWrite) error { writes.Add(1); return nil } })
	b := makeBundle(t, fw{version: "2.0.0", edit: func(m *bundle.Manifest) {
		cp := *m.Parts["app"]
		m.Parts["app2"] = &cp // same src, same digests: only one can be written
	}})
	_, verr := bundle.Verify(bytes.NewReader(b))
	if verr == nil {
		t.Fatal("bundle.Verify accepted two parts with one src")
	}
	_, err := e.call("OTA.Update", map[string]any{"url": e.serve("/dup.zip", b), "commit_timeout": 300})
	wantErr(t, err, -1, bundle.StatusMessage(verr))
	if bundle.StatusMessage(verr) != "Duplicate part src" {
		t.Fatalf("verify's reason %q", verr)
	}
	if n := writes.Load(); n != 0 {
		t.Fatalf("%d flash writes for a refused bundle", n)
	}
	if bs := e.bootState(); bs != committed0 {
		t.Fatalf("boot state %+v", bs)
	}
	if s := e.d.State(); s.OTAState != 2 || s.OTAMessage != "Duplicate part src" {
		t.Fatalf("OTA.Status after the refusal: %+v", s)
	}
	e.update(fw{version: "2.0.1"}, 300)
	if s := e.d.State(); s.Version != "2.0.1" {
		t.Fatalf("next update: %+v", s)
	}
}
