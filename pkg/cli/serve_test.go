package cli

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"path/filepath"
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
