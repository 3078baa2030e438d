package emulator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"runtime"
	"sync"

	"github.com/otactl/otactl/pkg/transport"
)

// HostConfig configures a Host: the transports its devices share. Zero
// values mean defaults.
type HostConfig struct {
	// Listen is the address of the one HTTP listener that serves every
	// device: POST /<id>/rpc, /<id>/rpc/<Method> and WebSocket /<id>/rpc.
	// Empty: no HTTP.
	Listen string
	// HTTPLimits bound the listener's clients. MaxConns is per device: how
	// many requests (and WebSocket connections) one device serves at once,
	// default 16, as a device on its own does; a request over it gets 503.
	// The timeouts are the listener's (defaults as for a device).
	HTTPLimits HTTPLimits
	// MaxConns is how many connections the listener serves at once. Zero:
	// HTTPLimits.MaxConns per device attached, at most DefaultHostMaxConns.
	MaxConns int
	// MQTTBroker is the broker every device connects to, one client
	// connection each: "mqtt://[user:pass@]host:port", mqtts://, or
	// "embedded" / "embedded:ADDR" for a broker the host runs in-process,
	// once for all its devices. Empty: no MQTT.
	MQTTBroker string
	// TLS makes the listener serve https:// and wss:// (and an embedded
	// broker mqtts://), and is how devices reach an mqtts:// broker
	// (docs/security.md). The host's devices share it. Nil: no TLS.
	TLS *TLSConfig
	// FailRate is the share of devices (0 to 1) that crash on booting a
	// new firmware (Config.CrashOnNewFirmware), picked by FailsNewFirmware
	// from Seed and each device's id.
	FailRate float64
	// Seed picks the failing devices (see FailsNewFirmware).
	Seed int64
	// Clock is the devices' clock when their Config has none. Default: the
	// system clock.
	Clock Clock
	// Logger gets the host's own log (listener errors), and is the
	// devices' logger when their Config has none. Default: discarded.
	Logger *slog.Logger
}

// Host runs many emulated devices in one process, as `otactl emulator
// --count N` does: it owns the transports they share (one HTTP listener
// that serves each device at /<id>/rpc, one embedded MQTT broker or the
// URL of an external one) and devices attach to them. Each device has its
// own flash, boot state, timers and firmware behaviour, its own MQTT
// client connection, and may have its own serial link; its reboot takes
// only it off the air.
type Host struct {
	cfg       HostConfig
	log       *slog.Logger
	tls       *deviceTLS
	http      *hostHTTP       // nil: no HTTP
	broker    *embeddedBroker // the embedded broker; nil: none
	brokerURL *url.URL        // an external broker; nil: none

	mu      sync.Mutex
	closed  bool
	order   []string           // ids in the order they were first added
	known   map[string]bool    // the ids in order
	devices map[string]*Device // nil value: being added
}

// NewHost starts the host's transports: its HTTP listener and embedded
// broker, if configured. Add devices with AddDevice; Close stops them all.
func NewHost(ctx context.Context, cfg HostConfig) (*Host, error) {
	if cfg.FailRate < 0 || cfg.FailRate > 1 {
		return nil, fmt.Errorf("emulator: fail rate %v: want a share from 0 to 1 (0.05 is 5 %%)", cfg.FailRate)
	}
	if cfg.Clock == nil {
		cfg.Clock = SystemClock()
	}
	h := &Host{cfg: cfg, log: orDiscard(cfg.Logger), devices: map[string]*Device{}, known: map[string]bool{}}
	var err error
	if h.tls, err = loadTLS(cfg.TLS); err != nil {
		return nil, err
	}
	if cfg.MQTTBroker != "" {
		if addr, ok := parseEmbedded(cfg.MQTTBroker); ok {
			h.broker = newEmbeddedBroker(addr, h.tls.embeddedServer())
			if err := h.broker.start(); err != nil {
				return nil, err
			}
		} else {
			if h.brokerURL, err = parseBrokerURL(cfg.MQTTBroker); err != nil {
				return nil, err
			}
			if h.tls != nil && h.tls.broker != nil && h.brokerURL.Scheme != "mqtts" {
				return nil, fmt.Errorf("emulator: an MQTT CA or client certificate needs an mqtts:// broker, not %s", transport.Redact(h.brokerURL))
			}
		}
	}
	if cfg.Listen != "" {
		if h.http, err = startHostHTTP(ctx, cfg.Listen, cfg.HTTPLimits, cfg.MaxConns, h.tls.serverConfig(), h.log); err != nil {
			if h.broker != nil {
				h.broker.close()
			}
			return nil, fmt.Errorf("emulator: %w", err)
		}
	}
	return h, nil
}

// attachment is what a host gives a device it runs.
type attachment struct {
	tls       *deviceTLS
	route     *route          // nil: no HTTP
	broker    *embeddedBroker // the host's embedded broker, or nil
	brokerURL *url.URL        // the host's external broker, or nil
}

// AddDevice prepares a device from cfg (as New does) on the host's
// transports and boots it. cfg.Listen, cfg.MQTTBroker and cfg.TLS must be
// empty (the host's apply); cfg.SerialLink gives the device a pty of its
// own. cfg.ID is required, must be unique on the host and may hold only
// letters, digits and "_.:-" (it is a URL path element and an MQTT topic
// level). A device of a host is closed by Host.Close, or by its own Close
// (its route then stays, off, and a new device with the same id may take
// its place, as after a power cut). AddDevice may be called from several
// goroutines at once.
func (h *Host) AddDevice(ctx context.Context, cfg Config) (*Device, error) {
	cfg, att, err := h.prepare(cfg)
	if err != nil {
		return nil, err
	}
	return h.boot(ctx, cfg, att)
}

// prepare checks cfg, fills in the host's defaults and reserves its id.
func (h *Host) prepare(cfg Config) (Config, *attachment, error) {
	if err := CheckHostedID(cfg.ID); err != nil {
		return cfg, nil, err
	}
	switch {
	case cfg.Listen != "":
		return cfg, nil, fmt.Errorf("emulator: device %s: Config.Listen is the host's (HostConfig.Listen) for a device it runs", cfg.ID)
	case cfg.MQTTBroker != "":
		return cfg, nil, fmt.Errorf("emulator: device %s: Config.MQTTBroker is the host's (HostConfig.MQTTBroker) for a device it runs", cfg.ID)
	case cfg.TLS != nil:
		return cfg, nil, fmt.Errorf("emulator: device %s: Config.TLS is the host's (HostConfig.TLS) for a device it runs", cfg.ID)
	}
	if cfg.Clock == nil {
		cfg.Clock = h.cfg.Clock
	}
	if cfg.Logger == nil {
		cfg.Logger = h.cfg.Logger
	}
	if FailsNewFirmware(h.cfg.Seed, cfg.ID, h.cfg.FailRate) {
		cfg.CrashOnNewFirmware = true
	}
	if err := h.reserve(cfg.ID); err != nil {
		return cfg, nil, err
	}
	att := &attachment{tls: h.tls, broker: h.broker, brokerURL: h.brokerURL}
	if h.http != nil {
		att.route = h.http.attach(cfg.ID)
	}
	return cfg, att, nil
}

// boot makes and starts the device of a prepared cfg.
func (h *Host) boot(ctx context.Context, cfg Config, att *attachment) (*Device, error) {
	d, err := newDevice(cfg, att)
	if err == nil {
		d.host = h
		if err = d.Start(ctx); err != nil {
			d.Close()
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if err != nil {
		delete(h.devices, cfg.ID)
		return nil, fmt.Errorf("device %s: %w", cfg.ID, err)
	}
	if h.closed {
		d.Close()
		return nil, errors.New("emulator: host closed")
	}
	h.devices[cfg.ID] = d
	return d, nil
}

// reserve takes id for a device being added: an id whose device is closed
// or off for good can be taken again.
func (h *Host) reserve(id string) error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return errors.New("emulator: host closed")
	}
	old, seen := h.devices[id]
	if seen && old == nil {
		h.mu.Unlock()
		return fmt.Errorf("emulator: device id %q is being added to this host already", id)
	}
	if old != nil {
		select {
		case <-old.Done():
		default:
			h.mu.Unlock()
			return fmt.Errorf("emulator: device id %q is taken on this host: ids must be unique", id)
		}
	}
	if !h.known[id] {
		h.known[id] = true
		h.order = append(h.order, id)
	}
	h.devices[id] = nil
	h.mu.Unlock()
	if old != nil {
		old.Close() // off for good: release what it still holds
	}
	return nil
}

// AddDevices adds and boots the devices of cfgs, several at once (their
// flash set up and their broker connections made in parallel), and returns
// them in the order of cfgs. On an error it closes those it added.
func (h *Host) AddDevices(ctx context.Context, cfgs []Config) ([]*Device, error) {
	out := make([]*Device, len(cfgs))
	errs := make([]error, len(cfgs))
	atts := make([]*attachment, len(cfgs))
	prepared := make([]Config, len(cfgs))
	// Ids are taken in order (Devices lists them so), then the devices
	// boot several at once.
	var first error
	for i, cfg := range cfgs {
		if prepared[i], atts[i], errs[i] = h.prepare(cfg); errs[i] != nil {
			first = errs[i]
			break
		}
	}
	if first == nil {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		sem := make(chan struct{}, addParallel())
		var wg sync.WaitGroup
		for i := range prepared {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
			}
			if ctx.Err() != nil {
				errs[i] = ctx.Err()
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				if out[i], errs[i] = h.boot(ctx, prepared[i], atts[i]); errs[i] != nil {
					cancel()
				}
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil && (first == nil || errors.Is(first, context.Canceled)) {
				first = err
			}
		}
	}
	if first == nil {
		return out, nil
	}
	for i, d := range out {
		if d != nil {
			d.Close()
		}
		if atts[i] != nil && d == nil && errs[i] != nil {
			h.release(prepared[i].ID)
		}
	}
	return nil, first
}

// release frees an id reserved for a device that was not booted.
func (h *Host) release(id string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if d, ok := h.devices[id]; ok && d == nil {
		delete(h.devices, id)
	}
}

// addParallel is how many devices AddDevices boots at once: their boots
// wait mostly on fsync and on the broker's answers.
func addParallel() int { return max(64, 8*runtime.GOMAXPROCS(0)) }

// Device returns the device with id, or nil.
func (h *Host) Device(id string) *Device {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.devices[id]
}

// Devices returns the host's devices in the order they were added.
func (h *Host) Devices() []*Device {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*Device, 0, len(h.order))
	for _, id := range h.order {
		if d := h.devices[id]; d != nil {
			out = append(out, d)
		}
	}
	return out
}

// Listeners describes the transports the host shares, with "{id}" where a
// device's id goes: "http://127.0.0.1:PORT/{id}/rpc", "ws://…/{id}/rpc",
// "mqtt://127.0.0.1:1883/{id}". Each device's Listeners gives its own.
func (h *Host) Listeners() []ListenerInfo {
	var out []ListenerInfo
	if h.http != nil {
		hs, ws := h.http.scheme()
		p := h.http.addr + "/{id}/rpc"
		out = append(out, ListenerInfo{Transport: hs, Addr: hs + "://" + p}, ListenerInfo{Transport: ws, Addr: ws + "://" + p})
	}
	if u := h.mqttURL(); u != nil {
		out = append(out, ListenerInfo{Transport: "mqtt", Addr: transport.Redact(u) + "/{id}"})
	}
	return out
}

// HTTPURL is the base URL of the host's HTTP listener
// ("http://127.0.0.1:PORT", https:// with TLS), or "" without one.
func (h *Host) HTTPURL() string {
	if h.http == nil {
		return ""
	}
	return h.http.baseURL()
}

// BrokerURL is the URL of the broker the devices connect to, redacted
// (mqtt://127.0.0.1:PORT for an embedded one), or "" without MQTT.
func (h *Host) BrokerURL() string {
	if u := h.mqttURL(); u != nil {
		return transport.Redact(u)
	}
	return ""
}

func (h *Host) mqttURL() *url.URL {
	switch {
	case h.broker != nil:
		return h.broker.URL()
	case h.brokerURL != nil:
		u := *h.brokerURL
		u.Path = ""
		return &u
	}
	return nil
}

// Close shuts every device down (in parallel), then the listener and the
// embedded broker. It is idempotent.
func (h *Host) Close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	h.closed = true
	var ds []*Device
	for _, d := range h.devices {
		if d != nil {
			ds = append(ds, d)
		}
	}
	h.mu.Unlock()
	errs := make([]error, len(ds))
	sem := make(chan struct{}, addParallel())
	var wg sync.WaitGroup
	for i, d := range ds {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs[i] = d.Close()
		}()
	}
	wg.Wait()
	if h.http != nil {
		errs = append(errs, h.http.close())
	}
	if h.broker != nil {
		errs = append(errs, h.broker.close())
	}
	return errors.Join(errs...)
}

// CheckHostedID checks that id can be the id of a device of a host: a path
// element of /<id>/rpc and an MQTT topic level (letters, digits and
// "_.:-", at most 128 bytes).
func CheckHostedID(id string) error {
	if id == "" {
		return errors.New("emulator: a device of a host needs an id (Config.ID)")
	}
	if id == "." || id == ".." || len(id) > 128 {
		return fmt.Errorf("emulator: device id %q: not usable in a URL path", id)
	}
	for _, r := range id {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '.' || r == ':' || r == '-'
		if !ok {
			return fmt.Errorf("emulator: device id %q: use only letters, digits and _ . : - (it is a URL path element and an MQTT topic level)", id)
		}
	}
	return nil
}
