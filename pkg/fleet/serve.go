package fleet

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"
)

// BundleServer serves one bundle file to every device of a rollout
// (docs/fleet.md, "The bundle server"). Each device gets a download of its
// own, at a path of its own (128 random bits), good for one GET: the same
// rules as the one-shot server of `otactl update --file`, so what a device
// sees does not depend on how many others download at once, and the bytes
// each device fetched can be followed.
//
// Memory stays bounded however many download at once: the file is opened
// once and every download streams from it (a section reader over the one
// *os.File) through a 32 KiB buffer from a pool; nothing holds the bundle.
// Keeping the file open also means a file replaced on disk during the
// rollout does not change what is served.
type BundleServer struct {
	file *os.File
	size int64
	base string // http://ADDR
	srv  *http.Server
	done chan struct{}

	mu        sync.Mutex
	downloads map[string]*Download // by path
	closed    bool

	bufs sync.Pool
}

// Download is one device's download of the bundle.
type Download struct {
	URL  string
	s    *BundleServer
	path string

	mu       sync.Mutex
	taken    bool
	finished bool
	progress func(sent, total int64)
}

// NewBundleServer serves file on ln until Close.
func NewBundleServer(file string, ln net.Listener) (*BundleServer, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file", file)
	}
	s := &BundleServer{file: f, size: st.Size(), base: "http://" + ln.Addr().String(), done: make(chan struct{}),
		downloads: map[string]*Download{}}
	s.bufs.New = func() any { b := make([]byte, 32<<10); return &b }
	s.srv = &http.Server{Handler: http.HandlerFunc(s.serve), ReadHeaderTimeout: 10 * time.Second}
	s.srv.SetKeepAlivesEnabled(false) // one request per connection, as a device makes
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(ln)
	}()
	return s, nil
}

// Size is the bundle's size in bytes.
func (s *BundleServer) Size() int64 { return s.size }

// NewDownload makes a download for one device. progress, if set, gets the
// bytes sent as they go out.
func (s *BundleServer) NewDownload(progress func(sent, total int64)) *Download {
	tok := make([]byte, 16) // 128 bits: not guessable, not enumerable
	_, _ = rand.Read(tok)
	path := "/" + hex.EncodeToString(tok) + "/fw.zip"
	d := &Download{URL: s.base + path, s: s, path: path, progress: progress}
	s.mu.Lock()
	s.downloads[path] = d
	s.mu.Unlock()
	return d
}

// Close ends the download: a GET that has not come yet is refused (410),
// one in flight goes on. Call it once the device's update is decided.
func (d *Download) Close() {
	d.mu.Lock()
	d.finished = true
	d.mu.Unlock()
}

// Taken reports whether the device started its download.
func (d *Download) Taken() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.taken
}

// Close stops the server and every download in flight, and waits for it.
func (s *BundleServer) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	err := s.srv.Close()
	<-s.done
	s.file.Close()
	return err
}

func (s *BundleServer) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	d := s.downloads[r.URL.Path]
	s.mu.Unlock()
	switch {
	case d == nil:
		http.Error(w, "404 page not found", http.StatusNotFound)
		return
	case r.Method != http.MethodGet:
		w.Header().Set("Allow", http.MethodGet)
		http.Error(w, "the bundle is served to one GET only", http.StatusMethodNotAllowed)
		return
	case r.Header.Get("Range") != "":
		http.Error(w, "the bundle is served whole, to one download only", http.StatusRequestedRangeNotSatisfiable)
		return
	}
	d.mu.Lock()
	taken, finished := d.taken, d.finished
	d.taken = true
	d.mu.Unlock()
	if taken || finished {
		http.Error(w, "the bundle was already downloaded: this link served one download", http.StatusGone)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/zip")
	h.Set("Content-Length", strconv.FormatInt(s.size, 10))
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)
	var out io.Writer = w
	if d.progress != nil {
		out = &sentCounter{w: w, total: s.size, progress: d.progress}
	}
	// io.CopyBuffer would hand the section reader to the response's
	// ReadFrom, which reads in buffers of its own: writerOnly keeps
	// ours.
	_, _ = io.CopyBuffer(writerOnly{out}, io.NewSectionReader(s.file, 0, s.size), *bp)
}

// writerOnly hides any ReadFrom method of the writer.
type writerOnly struct{ io.Writer }

// sentCounter reports the body bytes written to the device.
type sentCounter struct {
	w           io.Writer
	sent, total int64
	progress    func(sent, total int64)
}

func (c *sentCounter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.sent += int64(n)
	c.progress(c.sent, c.total)
	return n, err
}
