package cli

import (
	"crypto/rand"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/otactl/otactl/pkg/transport"
)

// oneShotServer serves one bundle file, once, at an unguessable path: the
// bundle server of `update --file` (docs/commands.md, "The bundle server").
//
// A device downloads the bundle of one OTA.Update with one plain GET,
// following redirects, without Range requests and without retrying: a
// download that fails fails the update (ota-http-client). So the server
// answers exactly one GET of its path with the whole file, and then:
//   - any other request for the path: 410 Gone (the one download is taken);
//   - HEAD or another method: 405; a Range request: 416 (a device never
//     sends one, and a piece of the bundle is no use to it);
//   - any other path: 404.
//
// Close ends it, once the update is decided (runUpdate, finish).
type oneShotServer struct {
	URL  string
	srv  *http.Server
	ln   net.Listener
	done chan struct{}

	taken atomic.Bool
}

// Close stops the server and any download in flight, and waits for it.
func (s *oneShotServer) Close() error {
	err := s.srv.Close()
	<-s.done
	return err
}

// serveOnce serves file on addr (HOST[:PORT]; empty: this machine's
// address on the route to the device named by port). progress, if set,
// gets the bytes sent of the download as they go out.
func serveOnce(file, addr, port string, progress func(sent, total int64)) (*oneShotServer, error) {
	host, p := addr, "0"
	if addr != "" {
		if h, pp, err := net.SplitHostPort(addr); err == nil {
			host, p = h, pp
		}
	} else {
		var err error
		host, err = routeAddr(port)
		if err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, p))
	if err != nil {
		return nil, usageErrorf("--serve-addr %s: %v", net.JoinHostPort(host, p), err)
	}
	tok := make([]byte, 16) // 128 bits: not guessable, not enumerable
	_, _ = rand.Read(tok)
	path := "/" + hex.EncodeToString(tok) + "/fw.zip"
	s := &oneShotServer{ln: ln, URL: "http://" + ln.Addr().String() + path, done: make(chan struct{})}
	s.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s.serve(w, r, path, file, progress)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	s.srv.SetKeepAlivesEnabled(false) // one request per connection, as a device makes
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(ln)
	}()
	return s, nil
}

func (s *oneShotServer) serve(w http.ResponseWriter, r *http.Request, path, file string, progress func(sent, total int64)) {
	refuse := func(code int, msg string) { http.Error(w, msg, code) }
	switch {
	case r.URL.Path != path:
		refuse(http.StatusNotFound, "404 page not found")
		return
	case r.Method != http.MethodGet:
		w.Header().Set("Allow", http.MethodGet)
		refuse(http.StatusMethodNotAllowed, "the bundle is served to one GET only")
		return
	case r.Header.Get("Range") != "":
		refuse(http.StatusRequestedRangeNotSatisfiable, "the bundle is served whole, to one download only")
		return
	case !s.taken.CompareAndSwap(false, true):
		refuse(http.StatusGone, "the bundle was already downloaded: this link served one download")
		return
	}
	fh, err := os.Open(file)
	if err != nil {
		http.Error(w, "cannot read the bundle", http.StatusInternalServerError)
		return
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		http.Error(w, "cannot read the bundle", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/zip")
	h.Set("Content-Length", strconv.FormatInt(st.Size(), 10))
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	var out io.Writer = w
	if progress != nil {
		out = &bodyCounter{w: w, total: st.Size(), progress: progress}
	}
	_, _ = io.Copy(out, io.LimitReader(fh, st.Size()))
}

// routeAddr finds this machine's address on the route to the device (or
// its MQTT broker). No packet is sent.
func routeAddr(port string) (string, error) {
	u, err := transport.ParsePort(port)
	if err != nil {
		return "", err
	}
	if u.Scheme == "serial" {
		return "", usageErrorf("--file over a serial port needs --serve-addr HOST:PORT that the device can reach on its network; or send the bundle over the serial link with 'otactl push'")
	}
	host := u.Hostname()
	if host == "" {
		return "", usageErrorf("cannot tell which address the device reaches this machine at: pass --serve-addr HOST:PORT")
	}
	c, err := net.Dial("udp", net.JoinHostPort(host, "9"))
	if err != nil {
		return "", usageErrorf("cannot find a route to %s: pass --serve-addr HOST:PORT (%v)", host, err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).IP.String(), nil
}

// bodyCounter reports the body bytes written to the device.
type bodyCounter struct {
	w           io.Writer
	sent, total int64
	progress    func(sent, total int64)
}

func (c *bodyCounter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.sent += int64(n)
	c.progress(c.sent, c.total)
	return n, err
}
