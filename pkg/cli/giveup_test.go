package cli

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/rpc"
	httptransport "github.com/otactl/otactl/pkg/transport/http"
)

// dripServer sends a bundle's headers (Content-Length 10000) and then one
// byte every 50 ms, until the client goes away or the test ends.
func dripServer(t *testing.T) string {
	t.Helper()
	stop := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "10000")
		w.WriteHeader(http.StatusOK)
		for range 10000 {
			if _, err := w.Write([]byte{'x'}); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-time.After(50 * time.Millisecond):
			case <-r.Context().Done():
				return
			case <-stop:
				return
			}
		}
	}))
	t.Cleanup(func() { close(stop); srv.Close() })
	return srv.URL + "/fw.zip"
}

// downloadingDevice is a device whose OTA.Update really downloads the URL,
// reporting progress in OTA.Status, and whose watchdog, like ota-common's,
// only counts time without progress: a drip-fed download never ends.
func downloadingDevice(t *testing.T) string {
	t.Helper()
	var got, total atomic.Int64
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); wg.Wait() })
	s := rpc.NewServer("dev1")
	s.Handle("Sys.GetInfo", func(context.Context, *rpc.Request) (any, error) {
		return map[string]any{"id": "dev1", "app": "app", "arch": "esp32", "fw_version": "1.0", "fw_id": "b1", "uptime": 3600}, nil
	})
	s.Handle("OTA.GetBootState", func(context.Context, *rpc.Request) (any, error) {
		return map[string]any{"active_slot": 0, "revert_slot": 0, "is_committed": true, "commit_timeout": 0}, nil
	})
	s.Handle("OTA.Status", func(context.Context, *rpc.Request) (any, error) {
		st := map[string]any{"state": 0}
		if n := total.Load(); n > 0 {
			st = map[string]any{"state": 1, "msg": "progress", "progress_percent": got.Load() * 100 / n}
		}
		return st, nil
	})
	s.Handle("OTA.Update", func(rctx context.Context, r *rpc.Request) (any, error) {
		url, _ := r.String("url")
		done := make(chan struct{})
		wg.Add(1)
		go func() { // the download goes on whatever happens to the request
			defer wg.Done()
			defer close(done)
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return
			}
			defer resp.Body.Close()
			total.Store(resp.ContentLength)
			buf := make([]byte, 100)
			for {
				n, err := resp.Body.Read(buf)
				got.Add(int64(n))
				if err == io.EOF || err != nil {
					return
				}
			}
		}()
		select {
		case <-done:
		case <-rctx.Done():
		}
		return nil, rpc.Errorf(-1, "Update failed")
	})
	srv := httptest.NewServer(httptransport.NewHandler(s, httptransport.HandlerOptions{}))
	t.Cleanup(srv.Close)
	return srv.URL + "/rpc"
}

// When otactl gives up waiting for the reply to OTA.Update, it says what
// the device is still doing (OTA.Status) and what ends it, with exit 5 and
// reason "timeout", in text and JSON mode.
func TestUpdateGivesUpOnADripFedDownload(t *testing.T) {
	for _, jsonOut := range []bool{false, true} {
		port := downloadingDevice(t)
		args := []string{"--port", port, "--timeout", "1s", "update", "--url", dripServer(t), "--update-timeout", "1s"}
		if jsonOut {
			args = append(args, "--json")
		}
		start := time.Now()
		r := run(t, nil, args...)
		if r.code != ExitUnreachable {
			t.Fatalf("json=%v: exit %d, stdout %q, stderr %q", jsonOut, r.code, r.stdout, r.stderr)
		}
		if el := time.Since(start); el < 2*time.Second || el > 10*time.Second {
			t.Errorf("gave up after %v, want --update-timeout + --timeout", el)
		}
		for _, want := range []string{"no reply to OTA.Update within 2s", "the device is still updating (OTA.Status: in progress, ",
			"Its update watchdog (--update-timeout 1s, counted from the start of the update) should have ended it",
			"goes on for as long as data keeps trickling in", "a reboot ends it at once ('otactl call Sys.Reboot')"} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("json=%v: stderr %q lacks %q", jsonOut, r.stderr, want)
			}
		}
		if jsonOut {
			var doc map[string]any
			if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil || doc["result"] != "unknown" || doc["reason"] != "timeout" ||
				doc["exit_code"] != float64(5) || !strings.Contains(doc["message"].(string), "in progress") {
				t.Errorf("document %q (%v)", r.stdout, err)
			}
		}
	}
}
