package ota_test

import (
	"bytes"
	"io"
	"net/http"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/ota"
)

// servedBundle writes a valid bundle of about size bytes and opens it.
func servedBundle(t *testing.T, size int) (*ota.LocalBundle, []byte) {
	t.Helper()
	body := benchBundle(t, size)
	path := bundleFile(t, body)
	b, err := ota.OpenBundle(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, body
}

// The bundle server reports the bytes each device fetched, for the
// progress bar of `update --file`, and serves only registered paths.
func TestBundleServerReportsProgress(t *testing.T) {
	b, body := servedBundle(t, 300_000)
	srv, err := ota.NewBundleServer("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	var mu sync.Mutex
	var last, total int64
	calls := 0
	dl := srv.Register(b, func(sent, tot int64) {
		mu.Lock()
		defer mu.Unlock()
		if sent < last {
			t.Errorf("progress went back: %d after %d", sent, last)
		}
		last, total = sent, tot
		calls++
	})
	resp, err := http.Get(dl.URL)
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
	if !dl.Taken() {
		t.Fatal("the download is not marked taken")
	}
	if r, err := http.Get(dl.URL + "x"); err == nil {
		r.Body.Close()
		if r.StatusCode != http.StatusNotFound {
			t.Fatalf("another path served: %d", r.StatusCode)
		}
	}
}

// Each registered download is one-shot: one GET of its unguessable path
// gets the whole bundle; a second download, a HEAD, a Range request and
// any other path are refused; once the download is closed (the update is
// decided), its path answers 410, and a stopped server nothing at all.
func TestBundleServerServesOneDownload(t *testing.T) {
	b, body := servedBundle(t, 100_000)
	srv, err := ota.NewBundleServer("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	dl := srv.Register(b, nil)
	other := srv.Register(b, nil)
	u, err := url.Parse(dl.URL)
	if err != nil {
		t.Fatal(err)
	}
	if tok := strings.Split(u.Path, "/")[1]; len(tok) < 32 {
		t.Fatalf("path token %q: want at least 128 bits", tok)
	}
	if dl.URL == other.URL {
		t.Fatal("two downloads share a path")
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
		{"GET", dl.URL + "x", nil, http.StatusNotFound},
		{"GET", "http://" + u.Host + "/", nil, http.StatusNotFound},
		{"GET", "http://" + u.Host + "/fw.zip", nil, http.StatusNotFound},
		{"HEAD", dl.URL, nil, http.StatusMethodNotAllowed},
		{"POST", dl.URL, nil, http.StatusMethodNotAllowed},
		{"GET", dl.URL, map[string]string{"Range": "bytes=0-99"}, http.StatusRequestedRangeNotSatisfiable},
	} {
		if got, _ := status(tc.method, tc.target, tc.hdr); got != tc.want {
			t.Errorf("%s %s %v: %d, want %d", tc.method, tc.target, tc.hdr, got, tc.want)
		}
	}
	// The refusals did not use up the one download.
	code, got := status("GET", dl.URL, nil)
	if code != http.StatusOK || !bytes.Equal(got, body) {
		t.Fatalf("download: %d, %d bytes", code, len(got))
	}
	if code, _ := status("GET", dl.URL, nil); code != http.StatusGone {
		t.Fatalf("second download: %d, want 410", code)
	}
	other.Close()
	if code, _ := status("GET", other.URL, nil); code != http.StatusGone {
		t.Fatalf("closed download: %d, want 410", code)
	}
	srv.Close()
	if resp, err := http.Get(dl.URL); err == nil {
		resp.Body.Close()
		t.Fatalf("a stopped server answered %d", resp.StatusCode)
	}
}

// Many devices downloading one bundle at once cost a buffer each, not the
// bundle: the heap stays far below downloads × bundle size (a rollout
// serves its bundle to every device from one BundleServer).
func TestBundleServerBoundedMemory(t *testing.T) {
	const size, n = 8 << 20, 48
	b, data := servedBundle(t, size)
	srv, err := ota.NewBundleServer("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)

	var peak atomic.Uint64
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	var wg sync.WaitGroup
	var bad atomic.Int32
	start := make(chan struct{})
	for range n {
		dl := srv.Register(b, nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			resp, err := http.Get(dl.URL)
			if err != nil {
				bad.Add(1)
				return
			}
			defer resp.Body.Close()
			// A slow reader: the server holds the download open.
			buf := make([]byte, 4096)
			var got int
			for {
				k, err := resp.Body.Read(buf)
				if k > 0 && (got+k > len(data) || !bytes.Equal(buf[:k], data[got:got+k])) {
					bad.Add(1)
					return
				}
				got += k
				if err != nil {
					break
				}
			}
			if got != len(data) {
				bad.Add(1)
			}
		}()
	}
	close(start)
	wg.Wait()
	close(stop)
	sampler.Wait()
	if bad.Load() != 0 {
		t.Fatalf("%d downloads went wrong", bad.Load())
	}
	growth := int64(peak.Load()) - int64(base.HeapInuse)
	// Per download: a 32 KiB copy buffer, the client's own buffers (this
	// test's 4 KiB, net/http's), goroutines. 48 × 8 MiB would be 384 MiB.
	if limit := int64(n * 256 << 10); growth > limit {
		t.Errorf("heap grew by %d KiB with %d downloads of %d MiB at once; want under %d KiB", growth>>10, n, size>>20, limit>>10)
	}
	t.Logf("heap growth with %d downloads of %d MiB at once: %d KiB", n, size>>20, growth>>10)
}
