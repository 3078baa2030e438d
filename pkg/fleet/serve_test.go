package fleet

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func newServer(t *testing.T, size int) (*BundleServer, []byte) {
	t.Helper()
	data := make([]byte, size)
	rand.Read(data)
	path := filepath.Join(t.TempDir(), "fw.zip")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewBundleServer(path, ln)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, data
}

func get(t *testing.T, method, url string, hdr ...string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// Each device's path serves one GET; other requests do not use it up.
func TestBundleServerOneDownloadEach(t *testing.T) {
	s, data := newServer(t, 100_000)
	var sent atomic.Int64
	a := s.NewDownload(func(n, total int64) { sent.Store(n) })
	b := s.NewDownload(nil)
	if a.URL == b.URL || !strings.HasSuffix(a.URL, "/fw.zip") {
		t.Fatalf("urls %s %s", a.URL, b.URL)
	}
	base := a.URL[:strings.Index(a.URL[7:], "/")+7]
	for _, tc := range []struct {
		method, url string
		hdr         []string
		want        int
	}{
		{"HEAD", a.URL, nil, 405},
		{"POST", a.URL, nil, 405},
		{"GET", a.URL, []string{"Range", "bytes=0-10"}, 416},
		{"GET", base + "/fw.zip", nil, 404},
		{"GET", base + "/00000000000000000000000000000000/fw.zip", nil, 404},
	} {
		if code, _ := get(t, tc.method, tc.url, tc.hdr...); code != tc.want {
			t.Errorf("%s %s %v: %d, want %d", tc.method, tc.url, tc.hdr, code, tc.want)
		}
	}
	code, body := get(t, "GET", a.URL)
	if code != 200 || !bytes.Equal(body, data) || sent.Load() != int64(len(data)) || !a.Taken() {
		t.Fatalf("download: %d, %d bytes (sent %d)", code, len(body), sent.Load())
	}
	if code, _ := get(t, "GET", a.URL); code != 410 {
		t.Errorf("second GET: %d, want 410", code)
	}
	b.Close() // decided before it downloaded
	if code, _ := get(t, "GET", b.URL); code != 410 {
		t.Errorf("GET of a closed download: %d, want 410", code)
	}
}

// Many devices downloading at once cost a buffer each, not the bundle: the
// heap stays far below downloads × bundle size.
func TestBundleServerBoundedMemory(t *testing.T) {
	const size, n = 8 << 20, 48
	s, data := newServer(t, size)
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
		d := s.NewDownload(nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			resp, err := http.Get(d.URL)
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
				if k > 0 && !bytes.Equal(buf[:k], data[got:got+k]) {
					bad.Add(1)
					return
				}
				got += k
				if err != nil {
					break
				}
			}
			if got != size {
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
