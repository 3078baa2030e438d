package emulator

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strconv"
	"testing"
	"time"
)

// received is how many bundle bytes the running update has counted (-1:
// no update runs).
func (e *env) received() int64 {
	e.d.mu.Lock()
	defer e.d.mu.Unlock()
	if e.d.upd == nil {
		return -1
	}
	return e.d.upd.got.Load()
}

// updateEnded reports whether no update runs or the running one was told
// to stop (the watchdog fires inside ManualClock.Advance; the update winds
// down after).
func (e *env) updateEnded() bool {
	e.d.mu.Lock()
	defer e.d.mu.Unlock()
	return e.d.upd == nil || e.d.upd.ctx.Err() != nil
}

func (e *env) otaStatus() map[string]any {
	e.t.Helper()
	var st map[string]any
	if err := json.Unmarshal(e.mustCall("OTA.Status", nil), &st); err != nil {
		e.t.Fatal(err)
	}
	return st
}

// A download server that sends one byte whenever the test says so (issue
// 7, defect 3: one byte every 2 s kept a device "in progress" for ever).
// The watchdog bounds the whole update: with timeout 5, the update fails
// 5 s after OTA.Update however steadily the bytes come; OTA.Status says
// "in progress" with its percent until then, and the error after; the
// device then takes the next update.
func TestWatchdogBoundsDripFedDownload(t *testing.T) {
	e := newEnv(t, nil)
	b := makeBundle(t, fw{version: "2.0.0"})
	next := make(chan struct{})
	e.setHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		for i := range b {
			select {
			case <-next:
			case <-r.Context().Done():
				return
			}
			w.Write(b[i : i+1])
			w.(http.Flusher).Flush()
		}
	}))
	replied := make(chan error, 1)
	go func() {
		_, err := e.call("OTA.Update", map[string]any{"url": e.srv.URL + "/drip.zip", "timeout": 5, "commit_timeout": 300})
		replied <- err
	}()
	e.waitUntil("the update to start", func(s State) bool { return s.OTAState == 1 })
	fired := false
	for i := 1; i <= 10 && !fired; i++ { // 10 bytes, 2 s apart
		select {
		case next <- struct{}{}:
		case err := <-replied:
			t.Fatalf("OTA.Update answered early: %v", err)
		}
		deadline := time.Now().Add(waitLimit)
		for e.received() < int64(i) {
			if time.Now().After(deadline) {
				t.Fatalf("the device never counted byte %d", i)
			}
			time.Sleep(time.Millisecond)
		}
		if st := e.otaStatus(); st["state"] != 1.0 || st["msg"] != "progress" {
			t.Fatalf("OTA.Status while downloading: %v", st)
		}
		e.clock.Advance(2 * time.Second)
		fired = e.updateEnded()
		if i < 3 && fired {
			t.Fatalf("watchdog fired after %d s, before its 5 s", 2*i)
		}
	}
	select {
	case err := <-replied:
		wantErr(t, err, -1, "Update timed out")
	case <-time.After(waitLimit):
		t.Fatal("the watchdog never ended the drip-fed update (10 bytes over 20 s, timeout 5 s)")
	}
	st := e.otaStatus()
	if st["state"] != 2.0 || st["msg"] != "Update timed out" {
		t.Fatalf("OTA.Status after the watchdog: %v", st)
	}
	if bs := e.bootState(); bs != committed0 {
		t.Fatalf("boot state %+v", bs)
	}
	e.setHandler(nil)
	e.update(fw{version: "2.0.1"}, 300)
	if s := e.d.State(); s.Version != "2.0.1" {
		t.Fatalf("next update: %+v", s)
	}
}

// The same rule for a push: OTA.Write calls that keep coming do not extend
// the timeout given to OTA.Begin.
func TestWatchdogBoundsSlowPush(t *testing.T) {
	e := newEnv(t, nil)
	b := makeBundle(t, fw{version: "2.0.0"})
	e.mustCall("OTA.Begin", map[string]any{"timeout": 5, "commit_timeout": 300, "size": len(b)})
	const chunk = 512
	off := 0
	write := func() error {
		_, err := e.call("OTA.Write", map[string]any{"offset": off, "data": base64.StdEncoding.EncodeToString(b[off : off+chunk])})
		off += chunk
		return err
	}
	for range 2 {
		if err := write(); err != nil {
			t.Fatalf("OTA.Write at %d: %v", off-chunk, err)
		}
		if st := e.otaStatus(); st["state"] != 1.0 || st["progress_percent"].(float64) <= 0 {
			t.Fatalf("OTA.Status while pushing: %v", st)
		}
		e.clock.Advance(3 * time.Second) // 3 s, then 6 s after OTA.Begin
	}
	wantErr(t, write(), -1, "Update timed out")
	if st := e.otaStatus(); st["state"] != 2.0 || st["msg"] != "Update timed out" {
		t.Fatalf("OTA.Status after the watchdog: %v", st)
	}
	if err := e.push(b, chunk, 300); err != nil {
		t.Fatalf("next push: %v", err)
	}
	e.waitBoots(2)
	if bs := e.bootState(); bs != uncommit1 {
		t.Fatalf("after the next push: %+v", bs)
	}
}
