package cli

import (
	"bytes"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// The one-shot server reports the bytes the device fetched, for the
// progress bar of `update --file`, and serves only its unguessable path.
func TestServeOnceReportsProgress(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fw.zip")
	body := bytes.Repeat([]byte("0123456789"), 100_000)
	if err := os.WriteFile(path, body, 0o644); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var last, total int64
	calls := 0
	srv, err := serveOnce(path, "127.0.0.1:0", "", func(sent, tot int64) {
		mu.Lock()
		defer mu.Unlock()
		if sent < last {
			t.Errorf("progress went back: %d after %d", sent, last)
		}
		last, total = sent, tot
		calls++
	})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("served %d bytes, %v", len(got), err)
	}
	mu.Lock()
	if last != int64(len(body)) || total != int64(len(body)) || calls < 2 {
		t.Fatalf("progress: last %d of %d after %d calls, want %d", last, total, calls, len(body))
	}
	mu.Unlock()
	if r, err := http.Get(srv.URL + "x"); err == nil {
		r.Body.Close()
		if r.StatusCode != http.StatusNotFound {
			t.Fatalf("another path served: %d", r.StatusCode)
		}
	}
}

// The bundle server of `update --file` is one-shot: one GET of its
// unguessable path gets the whole bundle; a second download, a HEAD, a
// Range request and any other path are refused; once closed (the update
// is decided), it accepts nothing more.
func TestServeOnceServesOneDownload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fw.zip")
	body := bytes.Repeat([]byte("fw"), 50_000)
	if err := os.WriteFile(path, body, 0o644); err != nil {
		t.Fatal(err)
	}
	srv, err := serveOnce(path, "127.0.0.1:0", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if tok := strings.Split(u.Path, "/")[1]; len(tok) < 32 {
		t.Fatalf("path token %q: want at least 128 bits", tok)
	}
	status := func(method, target string, hdr map[string]string) (int, []byte) {
		t.Helper()
		req, err := http.NewRequest(method, target, nil)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	for _, tc := range []struct {
		method, target string
		hdr            map[string]string
		want           int
	}{
		{"GET", srv.URL + "x", nil, http.StatusNotFound},
		{"GET", "http://" + u.Host + "/", nil, http.StatusNotFound},
		{"GET", "http://" + u.Host + "/fw.zip", nil, http.StatusNotFound},
		{"HEAD", srv.URL, nil, http.StatusMethodNotAllowed},
		{"POST", srv.URL, nil, http.StatusMethodNotAllowed},
		{"GET", srv.URL, map[string]string{"Range": "bytes=0-99"}, http.StatusRequestedRangeNotSatisfiable},
	} {
		if got, _ := status(tc.method, tc.target, tc.hdr); got != tc.want {
			t.Errorf("%s %s %v: %d, want %d", tc.method, tc.target, tc.hdr, got, tc.want)
		}
	}
	// The refusals did not use up the one download.
	code, got := status("GET", srv.URL, nil)
	if code != http.StatusOK || !bytes.Equal(got, body) {
		t.Fatalf("download: %d, %d bytes", code, len(got))
	}
	if code, _ := status("GET", srv.URL, nil); code != http.StatusGone {
		t.Fatalf("second download: %d, want 410", code)
	}
	srv.Close()
	if resp, err := http.Get(srv.URL); err == nil {
		resp.Body.Close()
		t.Fatalf("a stopped server answered %d", resp.StatusCode)
	}
}
