package emulator

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"

	"github.com/otactl/otactl/pkg/transport"
	httptransport "github.com/otactl/otactl/pkg/transport/http"
	"github.com/otactl/otactl/pkg/transport/ws"
)

// DefaultHostMaxConns caps the connections a host's HTTP listener serves
// at once, whatever the number of devices (each device counts
// HTTPLimits.MaxConns towards it; see HostConfig.MaxConns).
const DefaultHostMaxConns = 4096

// hostHTTP is a host's HTTP and WebSocket listener: one TCP listener (and
// one http.Server with the limits of HTTPLimits) whose requests for
// /<id>/rpc and /<id>/rpc/<Method> go to the device attached as id. It
// stays up while devices reboot: a device going off detaches only its own
// route.
type hostHTTP struct {
	log      *slog.Logger
	lim      HTTPLimits // with defaults; MaxConns is per device
	maxConns int        // HostConfig.MaxConns; 0: per device × devices, capped
	tls      *tls.Config

	ln   *limitListener
	srv  *http.Server
	done chan struct{}
	addr string

	mu     sync.RWMutex
	routes map[string]*route
}

type connKey struct{}

func startHostHTTP(ctx context.Context, addr string, lim HTTPLimits, maxConns int, tlsConf *tls.Config, log *slog.Logger) (*hostHTTP, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w (is another emulator running there?)", addr, err)
	}
	h := &hostHTTP{log: log, lim: lim.withDefaults(), maxConns: maxConns, tls: tlsConf, addr: ln.Addr().String(),
		routes: map[string]*route{}, done: make(chan struct{})}
	h.ln = newLimitListener(ln, h.limit(0), log)
	var serveLn net.Listener = h.ln
	if tlsConf != nil {
		serveLn = tls.NewListener(h.ln, tlsConf)
	}
	h.srv = &http.Server{
		Handler:           h,
		ReadHeaderTimeout: h.lim.HeaderTimeout,
		ReadTimeout:       h.lim.ReadTimeout,
		IdleTimeout:       h.lim.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		// A device's reboot closes the connections of its requests in
		// flight: each request knows its connection.
		ConnContext: func(ctx context.Context, c net.Conn) context.Context { return context.WithValue(ctx, connKey{}, c) },
	}
	go func() {
		defer close(h.done)
		_ = h.srv.Serve(serveLn)
	}()
	return h, nil
}

// limit is the listener's connection limit for n devices.
func (h *hostHTTP) limit(n int) int {
	if h.maxConns > 0 {
		return h.maxConns
	}
	return min(max(n, 1)*h.lim.MaxConns, DefaultHostMaxConns)
}

func (h *hostHTTP) scheme() (string, string) {
	if h.tls != nil {
		return "https", "wss"
	}
	return "http", "ws"
}

// BaseURL is the listener's URL, without a device path.
func (h *hostHTTP) baseURL() string {
	s, _ := h.scheme()
	return s + "://" + h.addr
}

// attach returns the route of device id (off until the device starts it).
func (h *hostHTTP) attach(id string) *route {
	h.mu.Lock()
	defer h.mu.Unlock()
	rt := h.routes[id]
	if rt == nil {
		rt = &route{id: id, host: h, conns: map[*inflight]struct{}{}}
		h.routes[id] = rt
	}
	h.ln.setMax(h.limit(len(h.routes)))
	return rt
}

// close stops the listener; every device's route must be stopped first.
func (h *hostHTTP) close() error {
	err := h.srv.Close()
	<-h.done
	h.ln.closeRefused()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// ServeHTTP routes /<id>/rpc… to the device attached as id.
func (h *hostHTTP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id, tail, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
	if tail != "rpc" && !strings.HasPrefix(tail, "rpc/") {
		http.Error(w, "Not Found: this emulator hosts many devices: the RPC endpoint of device ID is /ID/rpc", http.StatusNotFound)
		return
	}
	h.mu.RLock()
	rt := h.routes[id]
	h.mu.RUnlock()
	if rt == nil {
		http.Error(w, fmt.Sprintf("no device %q on this emulator%s", id, h.someIDs()), http.StatusNotFound)
		return
	}
	rt.serve(w, r)
}

// someIDs says which devices the listener serves: " (3 devices: a … c)".
func (h *hostHTTP) someIDs() string {
	h.mu.RLock()
	ids := slices.Sorted(maps.Keys(h.routes))
	h.mu.RUnlock()
	switch len(ids) {
	case 0:
		return ""
	case 1:
		return " (1 device: " + ids[0] + ")"
	}
	return fmt.Sprintf(" (%d devices: %s … %s)", len(ids), ids[0], ids[len(ids)-1])
}

// route is one device's place on its host's listener: a Listener that the
// device starts when it boots and stops when it goes off. While it is off,
// requests for the device get no answer (their connection is closed), as
// from a device that is off: otactl sees a link error and retries, never an
// HTTP error from something that is not the device.
type route struct {
	id   string
	host *hostHTTP

	mu     sync.Mutex
	up     bool
	h      http.Handler // the device's HTTP handler for this boot
	ws     *ws.Handler
	active int // requests and WebSocket connections being served
	conns  map[*inflight]struct{}
	wg     sync.WaitGroup
}

// inflight is one request being served (a WebSocket connection too).
type inflight struct{ c net.Conn }

func (rt *route) serve(w http.ResponseWriter, r *http.Request) {
	rt.mu.Lock()
	if !rt.up {
		rt.mu.Unlock()
		dropConn(w)
		return
	}
	if rt.active >= rt.host.lim.MaxConns {
		rt.mu.Unlock()
		rt.host.log.Debug("HTTP: too many requests for one device: refusing one", "device", rt.id, "limit", rt.host.lim.MaxConns)
		w.Header().Set("Connection", "close")
		w.Header().Set("Retry-After", "1")
		http.Error(w, "Service Unavailable: too many connections, try again", http.StatusServiceUnavailable)
		return
	}
	rt.active++
	e := &inflight{}
	e.c, _ = r.Context().Value(connKey{}).(net.Conn)
	rt.conns[e] = struct{}{}
	rt.wg.Add(1)
	h := rt.h
	rt.mu.Unlock()
	defer func() {
		rt.mu.Lock()
		rt.active--
		delete(rt.conns, e)
		rt.mu.Unlock()
		rt.wg.Done()
	}()
	h.ServeHTTP(w, r)
}

// dropConn closes the request's connection without an answer.
func dropConn(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		if c, _, err := hj.Hijack(); err == nil {
			c.Close()
			return
		}
	}
	panic(http.ErrAbortHandler)
}

// Start implements Listener: the device answers at /<id>/rpc.
func (rt *route) Start(_ context.Context, h transport.Handler) error {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.up {
		return nil
	}
	log := rt.host.log.With("device", rt.id)
	rt.ws = ws.NewHandler(h, transport.Options{Logger: log})
	rt.h = httptransport.NewHandler(h, httptransport.HandlerOptions{WebSocket: rt.ws, Logger: log, Path: "/" + rt.id + "/rpc"})
	rt.up = true
	return nil
}

// dropClients takes the route off: new requests get no answer, and the
// connections of the requests in flight (WebSocket ones included) close at
// once, before the device's handlers return, so that no reply of the boot
// that ends reaches a client.
func (rt *route) dropClients() {
	rt.mu.Lock()
	rt.up = false
	conns := make([]net.Conn, 0, len(rt.conns))
	for e := range rt.conns {
		if e.c != nil {
			conns = append(conns, e.c)
		}
	}
	rt.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// Stop implements Listener: the route goes off (dropClients), and Stop
// returns once the handlers of its requests and WebSocket connections
// have. The listener stays up for the other devices.
func (rt *route) Stop() error {
	rt.dropClients()
	rt.mu.Lock()
	wsh := rt.ws
	rt.mu.Unlock()
	if wsh != nil {
		wsh.CloseAll()
	}
	rt.wg.Wait()
	return nil
}

// Info implements Listener.
func (rt *route) Info() []ListenerInfo {
	hs, ws := rt.host.scheme()
	p := rt.host.addr + "/" + rt.id + "/rpc"
	return []ListenerInfo{{Transport: hs, Addr: hs + "://" + p}, {Transport: ws, Addr: ws + "://" + p}}
}
