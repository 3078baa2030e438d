package emulator

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/otactl/otactl/pkg/transport"
	httptransport "github.com/otactl/otactl/pkg/transport/http"
	"github.com/otactl/otactl/pkg/transport/mqtt"
	"github.com/otactl/otactl/pkg/transport/serial"
	"github.com/otactl/otactl/pkg/transport/ws"
)

// configListeners builds the listeners named by Config.Listen, SerialLink
// and MQTTBroker, or, for a device attached to a host, the host's route and
// broker plus its own serial link.
func (d *Device) configListeners(att *attachment) ([]Listener, error) {
	var out []Listener
	var tlsConf *deviceTLS
	if att != nil {
		tlsConf = att.tls
	} else {
		var err error
		if tlsConf, err = loadTLS(d.cfg.TLS); err != nil {
			return nil, err
		}
	}
	switch {
	case att != nil && att.route != nil:
		out = append(out, att.route)
	case d.cfg.Listen != "":
		l := NewHTTPListener(d.cfg.Listen, d.log)
		l.Limits = d.cfg.HTTPLimits
		if tlsConf != nil {
			l.TLS = tlsConf.server
		}
		out = append(out, l)
	}
	if d.cfg.SerialLink != "" {
		l := NewSerialListener(d.cfg.SerialLink, d.log)
		l.Baud = d.cfg.SerialBaud
		out = append(out, l)
	}
	var ml *MQTTListener
	switch {
	case att != nil && att.broker != nil:
		ml = newEmbeddedMQTTListener(att.broker, d.cfg.ID, d.log)
	case att != nil && att.brokerURL != nil:
		ml = &MQTTListener{id: d.cfg.ID, log: d.log, url: att.brokerURL}
	case att != nil:
	case d.cfg.MQTTBroker != "":
		if addr, ok := parseEmbedded(d.cfg.MQTTBroker); ok {
			d.ownBroker = newEmbeddedBroker(addr, tlsConf.embeddedServer())
			ml = newEmbeddedMQTTListener(d.ownBroker, d.cfg.ID, d.log)
			break
		}
		var err error
		if ml, err = NewMQTTListener(d.cfg.MQTTBroker, d.cfg.ID, d.log); err != nil {
			return nil, err
		}
	}
	if ml != nil {
		if err := ml.setTLS(tlsConf); err != nil {
			return nil, err
		}
		clock := d.clock
		ml.Connect = mqtt.ServeOptions{
			Background:   true,
			MinReconnect: d.cfg.MQTTReconnectMin,
			MaxReconnect: d.cfg.MQTTReconnectMax,
			Jitter:       mqttReconnectJitter,
			AfterFunc:    func(dur time.Duration, f func()) func() bool { return clock.AfterFunc(dur, f).Stop },
		}
		d.mqtt = ml
		out = append(out, ml)
	}
	return out, nil
}

// Defaults of HTTPLimits: what a small device's HTTP server allows.
const (
	DefaultHTTPMaxConns      = 16
	DefaultHTTPHeaderTimeout = 5 * time.Second
	DefaultHTTPReadTimeout   = 10 * time.Second
	DefaultHTTPIdleTimeout   = 30 * time.Second
)

// HTTPLimits bound what the HTTP listener spends on its clients, as a small
// device's server does, so that slow or idle clients cannot hold it (docs/
// emulator.md, "HTTP limits"). Zero values mean the defaults.
type HTTPLimits struct {
	// MaxConns is how many connections (HTTP and WebSocket together) are
	// served at once. A connection over it is answered "503 Service
	// Unavailable" and closed at once. Default 16.
	MaxConns int
	// HeaderTimeout bounds reading a request's header. Default 5 s.
	HeaderTimeout time.Duration
	// ReadTimeout bounds reading a whole request, header and body, from
	// its first byte. Default 10 s. (The answer may take longer: a
	// deferred OTA.Update reply comes when the update ends.)
	ReadTimeout time.Duration
	// IdleTimeout closes a kept-alive connection that sends no new request
	// for that long. Default 30 s. WebSocket connections are not idle
	// connections: they stay until either end closes them.
	IdleTimeout time.Duration
}

func (lim HTTPLimits) withDefaults() HTTPLimits {
	if lim.MaxConns <= 0 {
		lim.MaxConns = DefaultHTTPMaxConns
	}
	if lim.HeaderTimeout <= 0 {
		lim.HeaderTimeout = DefaultHTTPHeaderTimeout
	}
	if lim.ReadTimeout <= 0 {
		lim.ReadTimeout = DefaultHTTPReadTimeout
	}
	if lim.IdleTimeout <= 0 {
		lim.IdleTimeout = DefaultHTTPIdleTimeout
	}
	return lim
}

// HTTPListener serves HTTP POST /rpc, /rpc/<Method> and WebSocket /rpc on
// one TCP listener, as a device does. After the first Start it listens at
// the same (resolved) address, so ":0" picks a port once.
type HTTPListener struct {
	// Limits bound slow, idle and surplus clients; set before Start.
	Limits HTTPLimits
	// TLS, when set before Start, makes the listener serve https:// and
	// wss:// with it.
	TLS *tls.Config

	log *slog.Logger

	mu   sync.Mutex
	addr string
	srv  *http.Server
	ws   *ws.Handler
	ln   *limitListener
	done chan struct{}
}

// NewHTTPListener returns a listener for addr (host:port).
func NewHTTPListener(addr string, log *slog.Logger) *HTTPListener {
	return &HTTPListener{addr: addr, log: orDiscard(log)}
}

// Start implements Listener.
func (l *HTTPListener) Start(ctx context.Context, h transport.Handler) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.srv != nil {
		return nil
	}
	var lc net.ListenConfig
	var ln net.Listener
	var err error
	// The port may still be held briefly by the previous boot's sockets.
	for i := 0; ; i++ {
		ln, err = lc.Listen(ctx, "tcp", l.addr)
		if err == nil || i == 50 || ctx.Err() != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("listening on %s: %w (is another emulator running there?)", l.addr, err)
	}
	l.addr = ln.Addr().String()
	lim := l.Limits.withDefaults()
	l.ln = newLimitListener(ln, lim.MaxConns, l.log)
	var serveLn net.Listener = l.ln
	if l.TLS != nil {
		serveLn = tls.NewListener(l.ln, l.TLS)
	}
	opts := transport.Options{Logger: l.log}
	l.ws = ws.NewHandler(h, opts)
	l.srv = &http.Server{
		Handler:           httptransport.NewHandler(h, httptransport.HandlerOptions{WebSocket: l.ws, Logger: l.log}),
		ReadHeaderTimeout: lim.HeaderTimeout,
		// From the request's first byte to the end of its body. The
		// WebSocket upgrade clears it on the connection it takes over.
		ReadTimeout: lim.ReadTimeout,
		IdleTimeout: lim.IdleTimeout,
		ErrorLog:    slog.NewLogLogger(l.log.Handler(), slog.LevelDebug),
	}
	l.done = make(chan struct{})
	srv, done, lln := l.srv, l.done, serveLn
	go func() {
		defer close(done)
		_ = srv.Serve(lln)
	}()
	return nil
}

// Stop implements Listener: the listener closes and every HTTP and
// WebSocket connection is dropped.
func (l *HTTPListener) Stop() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.srv == nil {
		return nil
	}
	err := l.srv.Close()
	l.ws.CloseAll()
	<-l.done
	l.ln.closeRefused()
	l.srv, l.ws, l.ln = nil, nil, nil
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// Info implements Listener.
func (l *HTTPListener) Info() []ListenerInfo {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.TLS != nil {
		return []ListenerInfo{
			{Transport: "https", Addr: "https://" + l.addr + "/rpc"},
			{Transport: "wss", Addr: "wss://" + l.addr + "/rpc"},
		}
	}
	return []ListenerInfo{
		{Transport: "http", Addr: "http://" + l.addr + "/rpc"},
		{Transport: "ws", Addr: "ws://" + l.addr + "/rpc"},
	}
}

// SerialListener serves the serial framing on a pty. The pty is made at
// the first Start and kept until Close, across reboots and power cuts, as
// a board's USB-UART adapter stays while its MCU resets: its slave path,
// and the symlink to it, never change while the emulator runs (a pty made
// anew at each boot could get a number another process's pty just freed,
// and the symlink would name that one meanwhile). Stop ends the device's
// end: what the host sends while the device is off or booting is dropped,
// as an MCU in reset does not read its UART, and nothing is answered. Each
// Start reads again with a fresh decoder, as a booting firmware does
// (docs/emulator.md, "Reboots").
type SerialListener struct {
	// Baud, when > 0, paces the link to that UART speed (8N1), so that
	// transfers take as long as over a real cable. Zero: as fast as the pty.
	Baud int

	link string
	log  *slog.Logger

	mu     sync.Mutex
	port   *uartPort // from the first Start until Close
	path   string    // the pty's own name (/dev/pts/N), from the first Start
	closed bool
	srv    *serial.Server
	// uart carries the device's log lines to the link while it is up
	// (uartlog.go); Log never takes mu, so that a handler logging while
	// Stop waits for it cannot deadlock.
	uart atomic.Pointer[uartQueue]
	// boot is the port while the device boots (booting), for its log.
	boot atomic.Pointer[uartPort]
}

// NewSerialListener returns a listener whose pty is reachable at link.
func NewSerialListener(link string, log *slog.Logger) *SerialListener {
	return &SerialListener{link: link, log: orDiscard(log)}
}

// Start implements Listener: the device (re)boots and answers on the pty,
// made now if it is the first Start.
func (l *SerialListener) Start(_ context.Context, h transport.Handler) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("emulator: the serial listener is closed")
	}
	if l.srv != nil {
		return nil
	}
	if l.port == nil {
		master, path, err := serial.OpenPTY(l.link)
		if err != nil {
			return err
		}
		l.path = path
		l.port = newUARTPort(master, l.Baud)
	}
	l.boot.Store(nil)
	l.srv = serial.Serve(context.Background(), l.port.attach(), h, transport.Options{Logger: l.log})
	l.uart.Store(startUARTQueue(l.srv, l.port.room))
	return nil
}

// Stop implements Listener: the device stops reading and answering; the
// pty and its link stay.
func (l *SerialListener) Stop() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.boot.Store(nil)
	if l.srv == nil {
		return nil
	}
	q := l.uart.Swap(nil)
	q.stop()
	err := l.srv.Close()
	q.wait()
	l.srv = nil
	return err
}

// Close stops the device's end and removes the pty and its symlink: the
// port goes away, as an unplugged adapter's does. It is idempotent.
func (l *SerialListener) Close() error {
	err := l.Stop()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	if l.port != nil {
		err = errors.Join(err, l.port.close())
		l.port = nil
	}
	return err
}

// Log prints a device log line on the link (between frames), when up,
// as firmware prints its log on its UART: at once, in order with the
// replies written after it. It never waits for the link: a line is
// dropped when nobody reads the port (its pty holds 2 KiB unread), as a
// UART's output is lost when nobody listens; while the host holds output
// off (XOFF) lines wait in a queue, and a line that finds it full is
// dropped.
func (l *SerialListener) Log(line string) {
	if q := l.uart.Load(); q != nil {
		q.put(line)
		return
	}
	if p := l.boot.Load(); p != nil {
		p.log(line)
	}
}

// booting says that the device's firmware starts (Device.powerOn, before
// each boot): until Start, the lines it logs go straight out on the port,
// as a firmware prints its boot output on its UART before its RPC is up,
// so that a client that keeps the port open sees them. While the device is
// off (after Stop, before booting) it prints nothing. Before the first
// Start there is no port yet.
func (l *SerialListener) booting() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.srv == nil && l.port != nil {
		l.boot.Store(l.port)
	}
}

// Info implements Listener: the port's address is its link, or without
// one the pty's own name once it exists.
func (l *SerialListener) Info() []ListenerInfo {
	l.mu.Lock()
	defer l.mu.Unlock()
	addr := l.link
	if addr == "" && l.port != nil {
		addr = l.path
	}
	return []ListenerInfo{{Transport: "serial", Addr: addr}}
}

// MQTT reconnect back-off of the emulated device: a Mongoose OS device
// (mongoose-os-libs/mqtt, mgos_mqtt_conn.c) waits mqtt.reconnect_timeout_min
// (2 s) after losing its broker or failing to reach it, doubles the wait
// after each failure up to mqtt.reconnect_timeout_max (60 s), spreads each
// wait by ±10 %, and subscribes again on every connection.
const (
	DefaultMQTTReconnectMin = 2 * time.Second
	DefaultMQTTReconnectMax = 60 * time.Second
	mqttReconnectJitter     = 0.1
)

// MQTTListener connects the device to an MQTT broker: one client
// connection, as a device has. Stop disconnects it. An embedded broker is
// not the listener's: its owner (a Host, or a Device started on its own)
// starts it before the device connects and stops it after.
type MQTTListener struct {
	// Connect tunes the broker connection (mqtt.ServeWith). The device
	// sets Background, so that a broker that is down does not keep it off
	// its other transports, and its reconnect back-off on its clock.
	Connect mqtt.ServeOptions

	id  string
	log *slog.Logger

	embedded  *embeddedBroker // the broker connected to, when in-process
	clientTLS *tls.Config     // the device's connection to its broker

	mu  sync.Mutex
	url *url.URL // an external broker's
	srv *mqtt.Server
	cur atomic.Pointer[mqtt.Server] // srv, for Connected without waiting on mu
}

// NewMQTTListener returns a listener that connects device deviceID to the
// broker at spec, "mqtt://[user:pass@]host:port" or mqtts://. (An
// in-process broker, "embedded", is set up by Config.MQTTBroker or by a
// Host, which own it.)
func NewMQTTListener(spec, deviceID string, log *slog.Logger) (*MQTTListener, error) {
	if _, ok := parseEmbedded(spec); ok {
		return nil, fmt.Errorf("emulator: an embedded MQTT broker is set up by Config.MQTTBroker or HostConfig.MQTTBroker, not by NewMQTTListener")
	}
	u, err := parseBrokerURL(spec)
	if err != nil {
		return nil, err
	}
	return &MQTTListener{id: deviceID, log: orDiscard(log), url: u}, nil
}

// parseBrokerURL checks an mqtt:// or mqtts:// broker URL.
func parseBrokerURL(spec string) (*url.URL, error) {
	u, err := url.Parse(spec)
	if err != nil || (u.Scheme != "mqtt" && u.Scheme != "mqtts") || u.Host == "" {
		return nil, fmt.Errorf("emulator: --mqtt-broker %q: want mqtt://host:port, mqtts://host:port, embedded or embedded:ADDR", transport.RedactString(spec))
	}
	return u, nil
}

// newEmbeddedMQTTListener returns a listener that connects device deviceID
// to b.
func newEmbeddedMQTTListener(b *embeddedBroker, deviceID string, log *slog.Logger) *MQTTListener {
	return &MQTTListener{id: deviceID, log: orDiscard(log), embedded: b}
}

func (l *MQTTListener) brokerURL() *url.URL {
	if l.embedded != nil {
		return l.embedded.URL()
	}
	return l.url
}

// Start implements Listener.
func (l *MQTTListener) Start(ctx context.Context, h transport.Handler) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.srv != nil {
		return nil
	}
	srv, err := mqtt.ServeWith(ctx, l.brokerURL(), l.id, h, transport.Options{Logger: l.log, TLS: l.clientTLS}, l.Connect)
	if err != nil {
		return err
	}
	l.srv = srv
	l.cur.Store(srv)
	return nil
}

// Stop implements Listener.
func (l *MQTTListener) Stop() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.srv == nil {
		return nil
	}
	l.cur.Store(nil)
	err := l.srv.Close()
	l.srv = nil
	return err
}

// Connected reports whether the device is connected to its broker with
// its request topic subscribed. It does not wait for a Start or Stop in
// progress.
func (l *MQTTListener) Connected() bool {
	srv := l.cur.Load()
	return srv != nil && srv.Connected()
}

// Info implements Listener.
func (l *MQTTListener) Info() []ListenerInfo {
	u := *l.brokerURL()
	u.Path = "/" + l.id
	return []ListenerInfo{{Transport: "mqtt", Addr: transport.Redact(&u)}}
}

// setTLS applies the device's TLS settings: towards an embedded broker
// (which listens with the device's certificate and its client CAs) it
// presents its own certificate and pins the broker's; towards an mqtts://
// broker it uses the configured CA and client certificate.
func (l *MQTTListener) setTLS(t *deviceTLS) error {
	if t == nil {
		return nil
	}
	if l.embedded != nil {
		if t.server != nil {
			l.clientTLS = t.embeddedClient()
		}
		return nil
	}
	if t.broker != nil && l.url.Scheme != "mqtts" {
		return fmt.Errorf("emulator: an MQTT CA or client certificate needs an mqtts:// broker, not %s", transport.Redact(l.url))
	}
	l.clientTLS = t.broker
	return nil
}

func orDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}
