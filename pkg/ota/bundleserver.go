package ota

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/otactl/otactl/pkg/transport"
)

// BundleServer serves local bundles to devices over HTTP, for updates by
// OTA.Update of a file on this machine (docs/commands.md, "The bundle
// server"). It serves any number of downloads at once, each registered for
// one device at its own unguessable path; a download streams from the
// shared LocalBundle through one small buffer, so memory stays bounded
// however many devices download at once.
//
// A device downloads the bundle of one OTA.Update with one plain GET,
// following redirects, without Range requests and without retrying: a
// download that fails fails the update (ota-http-client). So each
// registered path answers exactly one GET with the whole file, and then:
//   - any other request for the path: 410 Gone (the one download is taken),
//     and any request once the Download was closed (the update it was for
//     is decided);
//   - HEAD or another method: 405; a Range request: 416 (a device never
//     sends one, and a piece of the bundle is no use to it);
//   - any other path: 404.
type BundleServer struct {
	srv  *http.Server
	ln   net.Listener
	base string // http://host:port
	done chan struct{}

	mu        sync.Mutex
	downloads map[string]*Download
	bufs      sync.Pool
}

// Download is one registered download: URL is what the device is given.
type Download struct {
	// URL is http://HOST:PORT/<128-bit token>/fw.zip.
	URL string

	b        *LocalBundle
	progress func(sent, total int64)
	taken    atomic.Bool
	closed   atomic.Bool
	cancel   chan struct{} // closed by Close: a download in flight stops
	once     sync.Once
}

// NewBundleServer listens on addr (HOST:PORT; port 0 picks a free one) and
// serves registered downloads until Close. A failure to listen is a usage
// error (the address is the caller's choice).
func NewBundleServer(addr string) (*BundleServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, WithReason(ReasonUsage, fmt.Errorf("--serve-addr %s: %v", addr, err))
	}
	return ServeBundles(ln), nil
}

// ServeBundles serves registered downloads on ln until Close (a rollout
// serves its bundle to every device this way, from one listener).
func ServeBundles(ln net.Listener) *BundleServer {
	s := &BundleServer{ln: ln, base: "http://" + ln.Addr().String(), done: make(chan struct{}), downloads: map[string]*Download{}}
	s.bufs.New = func() any { b := make([]byte, 32<<10); return &b }
	s.srv = &http.Server{Handler: http.HandlerFunc(s.serve), ReadHeaderTimeout: 10 * time.Second}
	s.srv.SetKeepAlivesEnabled(false) // one request per connection, as a device makes
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(ln)
	}()
	return s
}

// Addr is the address the server listens on.
func (s *BundleServer) Addr() net.Addr { return s.ln.Addr() }

// Register makes b downloadable once, at a new unguessable path. progress,
// if set, gets the bytes sent of that download as they go out (called from
// the server's goroutine).
func (s *BundleServer) Register(b *LocalBundle, progress func(sent, total int64)) *Download {
	tok := make([]byte, 16) // 128 bits: not guessable, not enumerable
	_, _ = rand.Read(tok)
	path := "/" + hex.EncodeToString(tok) + "/fw.zip"
	d := &Download{URL: s.base + path, b: b, progress: progress, cancel: make(chan struct{})}
	s.mu.Lock()
	s.downloads[path] = d
	s.mu.Unlock()
	return d
}

// Close ends the download: its path answers 410 from now on, and a
// transfer in flight stops (the device's download fails).
func (d *Download) Close() {
	d.once.Do(func() {
		d.closed.Store(true)
		close(d.cancel)
	})
}

// Taken reports whether the device started the download.
func (d *Download) Taken() bool { return d.taken.Load() }

// Close stops the server and every download in flight, and waits for it.
func (s *BundleServer) Close() error {
	err := s.srv.Close()
	<-s.done
	return err
}

func (s *BundleServer) serve(w http.ResponseWriter, r *http.Request) {
	refuse := func(code int, msg string) { http.Error(w, msg, code) }
	s.mu.Lock()
	d := s.downloads[r.URL.Path]
	s.mu.Unlock()
	switch {
	case d == nil:
		refuse(http.StatusNotFound, "404 page not found")
		return
	case r.Method != http.MethodGet:
		w.Header().Set("Allow", http.MethodGet)
		refuse(http.StatusMethodNotAllowed, "the bundle is served to one GET only")
		return
	case r.Header.Get("Range") != "":
		refuse(http.StatusRequestedRangeNotSatisfiable, "the bundle is served whole, to one download only")
		return
	case d.closed.Load():
		refuse(http.StatusGone, "the update this link was for is decided: it serves no more downloads")
		return
	case !d.taken.CompareAndSwap(false, true):
		refuse(http.StatusGone, "the bundle was already downloaded: this link served one download")
		return
	}
	size := d.b.Size
	h := w.Header()
	h.Set("Content-Type", "application/zip")
	h.Set("Content-Length", strconv.FormatInt(size, 10))
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	// Close of the Download ends a write that blocks on a slow device too.
	rc := http.NewResponseController(w)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-d.cancel:
			_ = rc.SetWriteDeadline(time.Now())
		case <-stop:
		}
	}()
	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)
	buf := *bp
	var sent int64
	for sent < size {
		select {
		case <-d.cancel:
			return
		case <-r.Context().Done():
			return
		default:
		}
		n, err := d.b.ReadAt(buf[:min(int64(len(buf)), size-sent)], sent)
		if n > 0 {
			k, werr := w.Write(buf[:n])
			sent += int64(k)
			if d.progress != nil && k > 0 {
				d.progress(sent, size)
			}
			if werr != nil {
				return
			}
		}
		if err != nil && err != io.EOF {
			return
		}
		if n == 0 {
			return // the file shrank: the device sees a short body and fails
		}
	}
}

// ServeHost finds this machine's address on the route to the device (or
// its MQTT broker) named by port, for a BundleServer the device can reach.
// No packet is sent. A serial port, or a port without a host, is a usage
// error that says to pass --serve-addr.
func ServeHost(port string) (string, error) {
	u, err := transport.ParsePort(port)
	if err != nil {
		return "", err
	}
	if u.Scheme == "serial" {
		return "", WithReason(ReasonUsage, fmt.Errorf("--file over a serial port needs --serve-addr HOST:PORT that the device can reach on its network; or send the bundle over the serial link with 'otactl push'"))
	}
	host := u.Hostname()
	if host == "" {
		return "", WithReason(ReasonUsage, fmt.Errorf("cannot tell which address the device reaches this machine at: pass --serve-addr HOST:PORT"))
	}
	c, err := net.Dial("udp", net.JoinHostPort(host, "9"))
	if err != nil {
		return "", WithReason(ReasonUsage, fmt.Errorf("cannot find a route to %s: pass --serve-addr HOST:PORT (%v)", host, err))
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).IP.String(), nil
}

// ServeAddr turns a --serve-addr value (HOST[:PORT], empty for the route to
// the device named by port) into a listen address, port 0 when none.
func ServeAddr(addr, port string) (string, error) {
	host, p := addr, "0"
	if addr != "" {
		if h, pp, err := net.SplitHostPort(addr); err == nil {
			host, p = h, pp
		}
		return net.JoinHostPort(host, p), nil
	}
	host, err := ServeHost(port)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(host, p), nil
}
