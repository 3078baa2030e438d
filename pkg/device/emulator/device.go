package emulator

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/otactl/otactl/pkg/ota/bundle"
	"github.com/otactl/otactl/pkg/ota/wire"
	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
)

// Firmware behaviours, the values of the manifest attribute
// BehaviorAttribute.
const (
	// BehaviorAttribute is the top-level manifest attribute that tells the
	// emulator how a firmware behaves when booted.
	BehaviorAttribute = "emulator_behavior"
	// BehaviorOK: boots and answers RPC (the default).
	BehaviorOK = "ok"
	// BehaviorCrashOnBoot: crashes during init; on a first boot after an
	// update the device reverts to the previous firmware at once.
	BehaviorCrashOnBoot = "crash_on_boot"
	// BehaviorNoRPC: boots but never answers RPC; only the commit timer
	// brings the previous firmware back.
	BehaviorNoRPC = "no_rpc"
)

// Defaults.
const (
	DefaultID             = "dev1"
	DefaultPlatform       = "esp32"
	DefaultSlots          = 2
	DefaultUpdateTimeout  = wire.DefaultUpdateTimeout
	DefaultRebootAfter    = wire.RebootAfter
	DefaultMaxRedirects   = 10
	DefaultFactoryVersion = "1.0.0"
)

// The pre-reboot window, as rpc-common's pre-handler does it on a device
// (MGOS_RPC_REBOOT_LOCKOUT_MS, MGOS_RPC_LOCKOUT_ERROR_CODE): a call that
// arrives when the scheduled reboot is RebootLockout away or closer gets
// error RebootLockoutCode "shutting down in N ms" instead of an answer.
const (
	RebootLockout     = wire.RebootLockout
	RebootLockoutCode = wire.CodeShuttingDown
)

// ReplyWaitLimit bounds, on the device's clock, how long a reboot that a
// call scheduled (OTA.Update/End, OTA.Revert, Sys.Reboot) waits, once due,
// for that call's reply to be handed to the link: a device replies first
// and reboots afterwards, but a link that does not take the reply (a
// stalled broker, a client that stopped reading) must not keep it from
// rebooting. Past it the device reboots and the reply is lost
// (docs/emulator.md, "Reboots").
const ReplyWaitLimit = 5 * time.Second

// Config configures a Device. Zero values mean defaults.
type Config struct {
	// StateDir holds the flash (slots and boot state). Required. A new
	// directory gets a factory firmware in slot 0, committed.
	StateDir string
	// ID is the device id (frame "src", MQTT topics). Default "dev1".
	ID string
	// Platform is the device architecture, checked against bundles.
	// Default "esp32".
	Platform string
	// Slots is the number of firmware slots (>= 2). Default 2.
	Slots int
	// FlashSync fsyncs every file and directory of the flash as it is
	// written, so that the state dir survives a crash of the host OS or a
	// loss of its power too. Without it (the default) the flash survives
	// what a device meets, a power cut at any flash write (Hooks,
	// PowerCut) and a kill of the emulator process at any instant, as
	// the writes reach the host's page cache in order and each commit is
	// a rename; it costs a fraction of the CPU (docs/emulator.md).
	FlashSync bool
	// RebootDelay is how long a reboot keeps the device off every
	// transport, on Clock: with a ManualClock the device stays off until
	// Advance moves past it (State.OffUntil says when). Zero reboots at
	// once (the command's default is 1s).
	RebootDelay time.Duration
	// RebootAfter is how long after replying OTA.Update/End, OTA.Revert
	// or Sys.Reboot (without delay_ms) the device reboots, on Clock: with
	// a ManualClock the reboot waits for Advance. Calls in the last
	// RebootLockout of that wait get error 418. Default 100ms.
	RebootAfter time.Duration

	// Listen is the address of the HTTP listener (/rpc, /rpc/<Method>
	// and WebSocket /rpc). Empty: none.
	Listen string
	// SerialLink, when set, creates a pty and a symlink at this path to
	// its device end, served with the serial framing.
	SerialLink string
	// SerialBaud, when > 0, paces the serial link to that UART speed (8N1:
	// baud/10 bytes a second each way), to measure transfers as over a
	// real cable. Zero: as fast as the pty goes.
	SerialBaud int
	// MQTTBroker is "mqtt://[user:pass@]host:port" to connect to, or
	// "embedded" / "embedded:ADDR" to start an in-process broker. Empty:
	// no MQTT.
	MQTTBroker string
	// HTTPLimits bound the HTTP listener's connections: how many at once,
	// and how long a request may take to arrive or a connection stay idle.
	// Zero values mean the defaults (16 connections, 5 s for a header, 10 s
	// for a whole request, 30 s idle).
	HTTPLimits HTTPLimits
	// MQTTReconnectMin and MQTTReconnectMax bound the wait, on Clock,
	// between the device's attempts to reach its MQTT broker: the wait
	// starts at the min after a lost connection or a failed attempt and
	// doubles with each failure up to the max, ±10 %, as on a device.
	// Defaults 2 s and 60 s (mgos mqtt.reconnect_timeout_min/max).
	MQTTReconnectMin, MQTTReconnectMax time.Duration
	// Listeners are extra transports (tests can add their own).
	Listeners []Listener

	// Signing is the device's update.key0..key7 and update.sig_req_mask
	// (see bundle.SignaturePolicy and docs/security.md). Nil: no keys,
	// sig_req_mask -1, signatures ignored. New copies it.
	Signing *bundle.SignaturePolicy

	// Auth is the device's RPC authentication and ACL (rpc.auth_domain,
	// rpc.auth_file, rpc.auth_algo, rpc.acl; docs/security.md). Nil: no
	// ACL, every call allowed.
	Auth *AuthConfig
	// TLS makes the HTTP listener serve https:// and wss:// (and the
	// embedded MQTT broker mqtts://), and lets the device reach an
	// mqtts:// broker (docs/security.md). Nil: no TLS.
	TLS *TLSConfig

	// CAFile is a PEM file of CAs trusted for HTTPS downloads (default:
	// the system pool).
	CAFile string
	// HTTPClient, when set, is used for downloads instead of one built
	// from CAFile.
	HTTPClient *http.Client
	// MaxRedirects bounds redirects followed by a download. Default 10.
	MaxRedirects int

	// FactoryVersion is the version of the factory firmware written to a
	// new StateDir. Default "1.0.0".
	FactoryVersion string

	// CrashOnNewFirmware makes every new firmware crash during init on
	// its first boot, as if each bundle said emulator_behavior
	// crash_on_boot: the device reverts to the firmware it ran and reboots
	// (docs/emulator.md, "Failing devices"). A new firmware is one booted
	// uncommitted whose build_id differs from that of its revert slot; a
	// committed boot never crashes for this. HostConfig.FailRate sets it
	// for a share of a host's devices.
	CrashOnNewFirmware bool

	// Clock drives the commit timer, the update watchdog and uptime.
	// Default: the system clock.
	Clock Clock
	// Logger gets the device log (the lines a firmware prints). Default:
	// discarded.
	Logger *slog.Logger
	// Hooks inject faults (power cuts at a flash write).
	Hooks Hooks
}

// Listener serves the device on one transport. The Device starts it when
// it boots and stops it when it goes off for a reboot, so Start and Stop
// alternate any number of times; Start after the first must listen at the
// same address.
type Listener interface {
	// Start begins serving h. It returns once the transport is reachable.
	Start(ctx context.Context, h transport.Handler) error
	// Stop closes the listener and every connection; clients see the
	// device go away.
	Stop() error
	// Info says where the transport is reachable (valid after Start):
	// one entry per way in (the HTTP listener also serves WebSocket).
	Info() []ListenerInfo
}

// ListenerInfo describes a running listener.
type ListenerInfo struct {
	// Transport is "http", "ws" (or "https", "wss" with TLS), "serial",
	// "mqtt" or a test's name.
	Transport string
	// Addr is what a client passes as --port (a URL or a device path).
	Addr string
}

// State is a snapshot of the device for tests and the command.
type State struct {
	// Online is true while the device is up on its transports.
	Online bool
	// PoweredOff is true after a power cut or Close.
	PoweredOff bool
	// Bricked is true when the booted firmware crashed while committed:
	// the device stays off (a real one would boot-loop) and Done is
	// closed; Start on such a flash returns an error.
	Bricked bool
	// Boots counts boots since this Device was created.
	Boots int
	// RunningSlot is the slot the running firmware was booted from.
	RunningSlot int
	// Boot is the boot state the device reports (OTA.GetBootState).
	Boot BootState
	// Persisted is the boot state on flash: what the next boot does.
	Persisted BootState
	// Firmware identity of the running slot.
	App, Version, BuildID, Behavior string
	// HealthMethod is the running firmware's health method and Health how
	// it answers ("ok", "fail", "late:N", "hang"): see HealthAttribute.
	HealthMethod, Health string
	// OTAState is OTA.Status's state (0 idle, 1 progress, 2 error, 3
	// success); OTAMessage its msg.
	OTAState   int
	OTAMessage string
	// OTAProgress is OTA.Status's progress_percent.
	OTAProgress int
	// CommitTimerArmed is true while the first-boot commit timer runs.
	CommitTimerArmed bool
	// RebootPending is true from the moment a reboot is scheduled (after
	// a reply that causes one) until the device goes off.
	RebootPending bool
	// OffUntil is, while the device is off for a reboot, when it boots
	// again on Config.Clock (its RebootDelay ends); zero otherwise. With a
	// ManualClock, Advance past it.
	OffUntil time.Time
	// CrashOnNewFirmware is Config.CrashOnNewFirmware.
	CrashOnNewFirmware bool
	// MQTTConnected is true while the device's MQTT client is connected
	// to its broker with its request topic subscribed.
	MQTTConnected bool
}

// Device is an emulated Mongoose OS device.
type Device struct {
	cfg    Config
	log    *slog.Logger
	clock  Clock
	fl     *flash
	srv    *rpc.Server
	client *http.Client
	auth   *deviceAuth // nil: no access control
	// uartLog is the serial listener that prints the device log, if any.
	uartLog atomic.Pointer[SerialListener]

	poweredOff atomic.Bool
	offOnce    sync.Once
	off        chan struct{} // closed at power cut or Close

	goMu     sync.Mutex
	goClosed bool
	wg       sync.WaitGroup
	life     context.Context
	lifeStop context.CancelFunc

	lmu       sync.Mutex // serialises listener start/stop
	listeners []Listener
	lstarted  bool

	host      *Host           // the host the device is attached to; nil: on its own
	ownBroker *embeddedBroker // an embedded broker a device on its own runs
	mqtt      *MQTTListener   // its broker connection; nil: no MQTT

	mu          sync.Mutex
	started     bool
	closed      bool
	online      bool // every transport is up (State.Online)
	answering   bool // booted: the device answers on the transports that are up
	bricked     bool
	rebooting   bool
	rebootAt    time.Time     // on the clock; zero: no reboot scheduled
	held        int           // calls whose reply the scheduled reboot waits for (callReply)
	unheld      chan struct{} // closed when held drops to 0; nil while 0
	hurry       chan struct{} // closed to end the wait for held replies at once; nil: none
	offUntil    time.Time     // on the clock: the end of a reboot's delay; zero: not waiting
	boots       int
	mem         BootState
	running     int
	manifest    *bundle.Manifest
	behavior    string
	health      health
	builtin     map[string]bool // the device's own methods
	bootTime    time.Time
	epoch       context.Context
	epochStop   context.CancelFunc
	commitTimer Timer
	upd         *update
	status      otaStatus
}

type otaStatus struct {
	state    wire.State
	msg      string
	progress int
}

// New prepares a device on cfg.StateDir (creating a factory firmware when
// the directory is new). It does not boot it: call Start. A device made by
// New owns its transports, including an embedded MQTT broker; to run many
// devices in one process, behind one HTTP listener and one broker, use a
// Host.
func New(cfg Config) (*Device, error) {
	return newDevice(cfg, nil)
}

// newDevice is New for a device on its own (att nil) or attached to a host.
func newDevice(cfg Config, att *attachment) (*Device, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("emulator: a state dir is required (--state-dir DIR)")
	}
	if cfg.ID == "" {
		cfg.ID = DefaultID
	}
	if cfg.Platform == "" {
		cfg.Platform = DefaultPlatform
	}
	if cfg.Slots == 0 {
		cfg.Slots = DefaultSlots
	}
	if cfg.Slots < 2 {
		return nil, fmt.Errorf("emulator: %d slots: at least 2 are needed for OTA", cfg.Slots)
	}
	if cfg.RebootAfter == 0 {
		cfg.RebootAfter = DefaultRebootAfter
	}
	if cfg.MaxRedirects == 0 {
		cfg.MaxRedirects = DefaultMaxRedirects
	}
	if cfg.FactoryVersion == "" {
		cfg.FactoryVersion = DefaultFactoryVersion
	}
	if cfg.Clock == nil {
		cfg.Clock = SystemClock()
	}
	if cfg.Signing != nil {
		p := *cfg.Signing
		cfg.Signing = &p
	}
	if cfg.MQTTReconnectMin <= 0 {
		cfg.MQTTReconnectMin = DefaultMQTTReconnectMin
	}
	if cfg.MQTTReconnectMax <= 0 {
		cfg.MQTTReconnectMax = DefaultMQTTReconnectMax
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Device{
		cfg:   cfg,
		clock: cfg.Clock,
		srv:   rpc.NewServer(cfg.ID),
		off:   make(chan struct{}),
	}
	// The device log goes to cfg.Logger (with the device's id) and, like a
	// firmware's, to its serial link (uartlog.go).
	d.log = slog.New(&uartHandler{next: log.With("device", cfg.ID).Handler(), uart: &d.uartLog})
	d.life, d.lifeStop = context.WithCancel(context.Background())
	d.fl = &flash{dir: cfg.StateDir, slots: cfg.Slots, sync: cfg.FlashSync, onCut: d.cutPower}
	if cfg.Auth != nil {
		a, err := newDeviceAuth(cfg.Auth, cfg.Clock, d.log)
		if err != nil {
			return nil, err
		}
		d.auth = a
	}
	client, err := d.buildHTTPClient()
	if err != nil {
		return nil, err
	}
	d.client = client
	if err := d.initFlash(); err != nil {
		return nil, err
	}
	// Hooks see the device's own writes (numbered from 1), not the
	// factory image.
	d.fl.hook = cfg.Hooks.FlashWrite
	d.fl.seq.Store(0)
	ls, err := d.configListeners(att)
	if err != nil {
		return nil, err
	}
	d.listeners = append(ls, cfg.Listeners...)
	for _, l := range d.listeners {
		if sl, ok := l.(*SerialListener); ok {
			d.uartLog.Store(sl)
			break
		}
	}
	d.registerMethods()
	d.builtin = map[string]bool{}
	for _, m := range d.srv.Methods() {
		d.builtin[m] = true
	}
	d.srv.SetGate(d.gate)
	return d, nil
}

func (d *Device) buildHTTPClient() (*http.Client, error) {
	max := d.cfg.MaxRedirects
	redirect := func(req *http.Request, via []*http.Request) error {
		if len(via) > max {
			return fmt.Errorf("stopped after %d redirects", max)
		}
		return nil
	}
	if d.cfg.HTTPClient != nil {
		c := *d.cfg.HTTPClient
		if c.CheckRedirect == nil {
			c.CheckRedirect = redirect
		}
		return &c, nil
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if d.cfg.CAFile != "" {
		pem, err := os.ReadFile(d.cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("emulator: reading CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("emulator: CA file %s holds no PEM certificate", d.cfg.CAFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: tr, CheckRedirect: redirect}, nil
}

// initFlash creates the state dir with a factory firmware in slot 0 when it
// holds no boot state yet.
func (d *Device) initFlash() error {
	if err := os.MkdirAll(d.cfg.StateDir, 0o755); err != nil {
		return fmt.Errorf("emulator: creating state dir: %w", err)
	}
	if _, err := os.Stat(d.fl.bootPath()); err == nil {
		_, err := d.fl.loadBoot()
		return err
	}
	for i := 0; i < d.cfg.Slots; i++ {
		if err := os.MkdirAll(filepath.Join(d.fl.slotDir(i), "parts"), 0o755); err != nil {
			return err
		}
		if err := os.MkdirAll(d.fl.fsDir(i), 0o755); err != nil {
			return err
		}
	}
	app := []byte("factory firmware for " + d.cfg.ID + "\n")
	m := &bundle.Manifest{
		Name: "emulator-app", Platform: d.cfg.Platform, Description: "otactl emulator factory firmware",
		Version: d.cfg.FactoryVersion, BuildID: "factory", BuildTimestamp: "2024-01-01T00:00:00Z",
		Parts: map[string]*bundle.Part{"app": {Type: "app", Src: "app.bin"}},
	}
	pw, err := d.fl.create(d.fl.partPath(0, "app", m.Parts["app"]), "part")
	if err != nil {
		return err
	}
	if _, err := pw.Write(app); err != nil {
		return err
	}
	if err := pw.Close(); err != nil {
		return err
	}
	size, s1, s256, err := digestFile(pw.path)
	if err != nil {
		return err
	}
	m.Parts["app"].Size, m.Parts["app"].CSSHA1, m.Parts["app"].CSSHA256 = bundle.Int64(size), s1, s256
	conf, _ := json.MarshalIndent(map[string]any{"device": map[string]any{"id": d.cfg.ID}}, "", "  ")
	if err := d.fl.writeFile(filepath.Join(d.fl.fsDir(0), "conf9.json"), conf); err != nil {
		return err
	}
	man, err := m.Indented()
	if err != nil {
		return err
	}
	if err := d.fl.writeAtomic(d.fl.manifestPath(0), man, "manifest"); err != nil {
		return err
	}
	return d.fl.saveBoot(BootState{ActiveSlot: 0, IsCommitted: true, RevertSlot: 0})
}

// ID returns the device's id.
func (d *Device) ID() string { return d.cfg.ID }

// RPC returns the device's method registry.
func (d *Device) RPC() *rpc.Server { return d.srv }

// Handler returns what a transport's device side serves: the RPC server,
// silent while the device is off and for a firmware that answers no RPC.
func (d *Device) Handler() transport.Handler { return deviceHandler{d} }

func (d *Device) handleFrame(ctx context.Context, f *frame.Frame) (resp *frame.Frame) {
	// A reboot this call schedules waits for its reply (callReply): until
	// the transport reports it written, or at once when there is none or
	// the transport does not report it.
	c := &callReply{d: d}
	ctx = context.WithValue(ctx, callReplyKey{}, c)
	defer func() {
		if resp == nil || !transport.AfterReply(ctx, c.release) {
			c.release()
		}
	}()
	d.mu.Lock()
	online := d.answering
	beh := d.behavior
	epoch := d.epoch
	d.mu.Unlock()
	if !online || d.poweredOff.Load() {
		return cutOff(ctx)
	}
	if beh == BehaviorNoRPC {
		select {
		case <-ctx.Done():
			return nil
		case <-epoch.Done():
			return cutOff(ctx)
		}
	}
	resp = d.srv.HandleFrame(ctx, f)
	if d.poweredOff.Load() || d.fl.dead.Load() || epoch.Err() != nil {
		// Off, or rebooted meanwhile: a device does not answer a call
		// of its previous run. (The flash dies first at a power cut, and
		// poweredOff follows: a handler that failed on the dead flash
		// must not get its error out in between.)
		return cutOff(ctx)
	}
	if resp != nil && d.cfg.Hooks.DropReply != nil && d.cfg.Hooks.DropReply(f.Method) {
		d.log.Warn("reply lost on its way (Hooks.DropReply)", "method", f.Method, "id", f.ID)
		return nil
	}
	return resp
}

// cutOff ends a call the device went away from (a reboot or a power cut
// while it was in flight): no reply, and the link breaks, as a real device's
// reboot resets its TCP connections (transport.Channel.Abort): an HTTP
// request's connection closes without an answer, a WebSocket connection
// closes. Without it the HTTP side would answer an empty 200, which a client
// takes as "no answer" and waits its whole timeout for.
func cutOff(ctx context.Context) *frame.Frame {
	transport.ChannelFrom(ctx).Abort()
	return nil
}

// Start boots the device and brings up its transports.
func (d *Device) Start(ctx context.Context) error {
	d.mu.Lock()
	if d.started || d.closed {
		d.mu.Unlock()
		return errors.New("emulator: Start called twice or after Close")
	}
	d.started = true
	d.mu.Unlock()
	if d.ownBroker != nil {
		// Up before the device connects, and across its reboots.
		if err := d.ownBroker.start(); err != nil {
			return err
		}
	}
	return d.powerOn(ctx)
}

// Listeners describes where the device is reachable (after Start).
func (d *Device) Listeners() []ListenerInfo {
	d.lmu.Lock()
	defer d.lmu.Unlock()
	out := make([]ListenerInfo, 0, len(d.listeners))
	for _, l := range d.listeners {
		out = append(out, l.Info()...)
	}
	return out
}

// Done is closed when the device is off for good: power cut, Close, or
// bricked (a committed firmware that crashes at boot; see State.Bricked).
func (d *Device) Done() <-chan struct{} { return d.off }

// FSDir returns the filesystem directory of the running slot.
func (d *Device) FSDir() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fl.fsDir(d.running)
}

// State returns a snapshot of the device.
func (d *Device) State() State {
	mqttUp := d.mqtt != nil && d.mqtt.Connected()
	d.mu.Lock()
	defer d.mu.Unlock()
	s := State{
		Online: d.online, PoweredOff: d.poweredOff.Load(), Bricked: d.bricked, Boots: d.boots,
		RunningSlot: d.running, Boot: d.mem, Behavior: d.behavior,
		HealthMethod: d.health.method, Health: d.health.String(),
		OTAState: int(d.status.state), OTAMessage: d.statusMsgLocked(), CommitTimerArmed: d.commitTimer != nil,
		RebootPending: !d.rebootAt.IsZero(), OffUntil: d.offUntil, CrashOnNewFirmware: d.cfg.CrashOnNewFirmware,
		MQTTConnected: mqttUp,
	}
	s.OTAProgress = d.status.progress
	if d.upd != nil {
		s.OTAProgress = d.upd.percent()
	}
	if d.manifest != nil {
		s.App, s.Version, s.BuildID = d.manifest.Name, d.manifest.Version, d.manifest.BuildID
	}
	if p, err := d.fl.loadBoot(); err == nil {
		s.Persisted = p
	}
	return s
}

// Reboot reboots the device as Sys.Reboot does, without the reply delay.
func (d *Device) Reboot() { d.requestReboot(0) }

// PowerCut cuts the power at once: no more replies, no more flash writes,
// every transport goes away. The state dir is left as it is; start a new
// Device on it to power on again.
func (d *Device) PowerCut() { d.fl.cut() }

// Close shuts the device down (like a power cut, but orderly: in-flight
// flash writes finish) and releases its transports. It is idempotent.
func (d *Device) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		<-d.off
		return nil
	}
	d.closed = true
	d.mu.Unlock()
	d.goMu.Lock()
	d.goClosed = true
	d.goMu.Unlock()
	d.lifeStop()
	d.goOffline()
	d.wg.Wait()
	d.stopListeners() // a reboot may have started them again meanwhile
	d.offOnce.Do(func() { close(d.off) })
	var errs []error
	d.lmu.Lock()
	for _, l := range d.listeners {
		if c, ok := l.(io.Closer); ok {
			errs = append(errs, c.Close())
		}
	}
	d.lmu.Unlock()
	if d.ownBroker != nil {
		errs = append(errs, d.ownBroker.close())
	}
	return errors.Join(errs...)
}

// cutPower is called by the flash at a power cut (maybe with d.mu held).
func (d *Device) cutPower() {
	if !d.poweredOff.CompareAndSwap(false, true) {
		return
	}
	d.log.Warn("power cut")
	d.spawn(func() {
		d.goOffline()
		d.offOnce.Do(func() { close(d.off) })
	})
}

// spawn runs f in a goroutine that Close waits for, unless closing.
func (d *Device) spawn(f func()) bool {
	d.goMu.Lock()
	defer d.goMu.Unlock()
	if d.goClosed {
		return false
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		f()
	}()
	return true
}

// offFor keeps the rebooting device off for dur on its clock (State.OffUntil
// meanwhile); false when it was closed or lost its power first.
func (d *Device) offFor(dur time.Duration) bool {
	if dur <= 0 {
		return d.life.Err() == nil
	}
	done := make(chan struct{})
	d.mu.Lock()
	d.offUntil = d.clock.Now().Add(dur)
	t := d.clock.AfterFunc(dur, func() { close(done) })
	d.mu.Unlock()
	defer func() {
		t.Stop()
		d.mu.Lock()
		d.offUntil = time.Time{}
		d.mu.Unlock()
	}()
	select {
	case <-done:
		return true
	case <-d.life.Done():
		return false
	case <-d.off:
		return false
	}
}

// callReply is one call's reply on its way out, as a reboot the call
// schedules sees it: the reboot waits (ReplyWaitLimit at most) until the
// reply is handed to the link. handleFrame puts one in each call's ctx.
type callReply struct {
	d    *Device
	held bool // the scheduled reboot waits for this reply (guarded by d.mu)
	done bool // sent, or none will be (guarded by d.mu)
}

type callReplyKey struct{}

// callFrom returns the call ctx belongs to, or nil.
func callFrom(ctx context.Context) *callReply {
	c, _ := ctx.Value(callReplyKey{}).(*callReply)
	return c
}

// holdLocked makes the scheduled reboot wait for c's reply (d.mu held).
func (c *callReply) holdLocked() {
	if c == nil || c.done || c.held {
		return
	}
	c.held = true
	if c.d.held == 0 {
		c.d.unheld = make(chan struct{})
	}
	c.d.held++
}

// release marks c's reply sent (or given up on): a reboot waiting for it
// may go.
func (c *callReply) release() {
	d := c.d
	d.mu.Lock()
	defer d.mu.Unlock()
	c.done = true
	if !c.held {
		return
	}
	c.held = false
	d.held--
	if d.held == 0 {
		close(d.unheld)
		d.unheld = nil
	}
}

// requestReboot reboots after the given delay on the device's clock,
// unless a reboot is already pending: a reboot from outside the device's
// calls (Device.Reboot, the commit timer's rollback), which cuts the calls
// in flight. When a pending reboot is only waiting for a reply to be sent
// (rebootAfterReply), it goes at once.
func (d *Device) requestReboot(after time.Duration) {
	d.scheduleReboot(nil, after)
}

// rebootAfterReply schedules the reboot that the call ctx belongs to
// causes (OTA.Update/End, OTA.Revert, Sys.Reboot): after the given delay
// on the device's clock and, as on a device, never before that call's
// reply has been handed to the link (ReplyWaitLimit at most). Until then
// the device answers, except in the last RebootLockout (and while the
// reboot waits for the reply), where every call gets error 418.
func (d *Device) rebootAfterReply(c *callReply, after time.Duration) {
	d.scheduleReboot(c, after)
}

func (d *Device) scheduleReboot(c *callReply, after time.Duration) {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return
	}
	c.holdLocked()
	if d.rebooting {
		if c == nil && d.hurry != nil {
			close(d.hurry) // from outside: stop waiting for replies
			d.hurry = nil
		}
		d.mu.Unlock()
		return
	}
	d.rebooting = true
	if c == nil && after <= 0 {
		d.mu.Unlock()
		d.reboot()
		return
	}
	d.hurry = make(chan struct{})
	d.rebootAt = d.clock.Now().Add(max(after, 0))
	d.mu.Unlock()
	if after > 0 {
		d.clock.AfterFunc(after, d.rebootWhenReplied) // stale after a power cut or Close: reboot checks
		return
	}
	d.rebootWhenReplied()
}

// rebootWhenReplied is the scheduled reboot, once due: it waits until the
// replies it waits for are sent (or ReplyWaitLimit passed, or a reboot from
// outside came), then reboots. It does not block (a ManualClock runs it
// inside Advance).
func (d *Device) rebootWhenReplied() {
	d.mu.Lock()
	if d.held == 0 || d.closed || d.hurry == nil {
		d.hurry = nil
		d.mu.Unlock()
		d.reboot()
		return
	}
	unheld, hurry, n := d.unheld, d.hurry, d.held
	limit := make(chan struct{})
	t := d.clock.AfterFunc(ReplyWaitLimit, func() { close(limit) })
	d.mu.Unlock()
	d.log.Debug("rebooting once the reply is sent", "calls", n)
	wait := func() {
		select {
		case <-unheld:
		case <-hurry:
		case <-limit:
			d.log.Warn("rebooting with a reply not sent: the link did not take it", "limit", ReplyWaitLimit)
		case <-d.life.Done():
		case <-d.off:
		}
		t.Stop()
		d.mu.Lock()
		if d.hurry == hurry {
			d.hurry = nil
		}
		d.mu.Unlock()
		d.reboot()
	}
	if !d.spawn(wait) {
		t.Stop()
		d.reboot() // closing: reboot clears rebooting
	}
}

// lockout is the RPC gate of the pre-reboot window (docs/emulator.md,
// "Reboots"): once a reboot is scheduled no more than RebootLockout ahead,
// every known method is answered with 418 "shutting down in N ms", as
// rpc-common's pre-handler does on a device.
func (d *Device) lockout(context.Context, *rpc.Request) *frame.Error {
	d.mu.Lock()
	at := d.rebootAt
	d.mu.Unlock()
	if at.IsZero() {
		return nil
	}
	left := at.Sub(d.clock.Now())
	if left > RebootLockout {
		return nil
	}
	return &frame.Error{Code: RebootLockoutCode, Message: wire.ShuttingDown(left.Milliseconds())}
}

// reboot takes the device off its transports, waits Config.RebootDelay and
// boots it again.
func (d *Device) reboot() {
	ok := d.spawn(func() {
		// rebooting is cleared by powerOn as the device comes back, or
		// here when it does not.
		cameBack := false
		defer func() {
			if !cameBack {
				d.mu.Lock()
				d.rebooting = false
				d.mu.Unlock()
			}
		}()
		if d.life.Err() != nil || d.poweredOff.Load() {
			return
		}
		d.log.Info("rebooting")
		d.goOffline()
		if !d.offFor(d.cfg.RebootDelay) || d.poweredOff.Load() {
			return
		}
		cameBack = true // powerOn clears rebooting
		if err := d.powerOn(d.life); err != nil && d.life.Err() == nil && !d.poweredOff.Load() {
			d.log.Error("boot failed", "err", err)
		}
	})
	if !ok {
		d.mu.Lock()
		d.rebooting = false
		d.mu.Unlock()
	}
}

// goOffline takes the device off every transport and ends the running
// firmware: in-flight handlers, the commit timer and any update.
func (d *Device) goOffline() {
	d.mu.Lock()
	d.online, d.answering = false, false
	if d.hurry != nil {
		close(d.hurry)
		d.hurry = nil
	}
	d.mu.Unlock()
	// Clients of a shared listener lose their connections now, before the
	// running firmware ends: no reply of this boot reaches them.
	d.dropClients()
	d.mu.Lock()
	d.rebootAt = time.Time{}
	if d.epochStop != nil {
		d.epochStop()
	}
	if d.commitTimer != nil {
		d.commitTimer.Stop()
		d.commitTimer = nil
	}
	u := d.upd
	d.mu.Unlock()
	d.stopListeners()
	if u != nil {
		<-u.done
	}
}

// clientDropper is a listener that can close its clients' connections at
// once, without waiting for their handlers (a host's route).
type clientDropper interface{ dropClients() }

func (d *Device) dropClients() {
	d.lmu.Lock()
	defer d.lmu.Unlock()
	for _, l := range d.listeners {
		if cd, ok := l.(clientDropper); ok {
			cd.dropClients()
		}
	}
}

func (d *Device) stopListeners() {
	d.lmu.Lock()
	defer d.lmu.Unlock()
	if !d.lstarted {
		return
	}
	d.lstarted = false
	for _, l := range d.listeners {
		if err := l.Stop(); err != nil {
			d.log.Warn("stopping listener", "transport", transportName(l), "err", err)
		}
	}
}

func (d *Device) startListeners(ctx context.Context) error {
	d.lmu.Lock()
	defer d.lmu.Unlock()
	if d.lstarted {
		return nil
	}
	if d.life.Err() != nil {
		return errors.New("emulator: device closed")
	}
	h := d.Handler()
	for i, l := range d.listeners {
		if err := l.Start(ctx, h); err != nil {
			for _, s := range d.listeners[:i] {
				s.Stop()
			}
			return fmt.Errorf("emulator: starting %s listener: %w", transportName(l), err)
		}
	}
	d.lstarted = true
	return nil
}

// powerOn boots (again after a crash on first boot) and goes online.
func (d *Device) powerOn(ctx context.Context) error {
	wentOnline := false
	defer func() {
		if !wentOnline {
			d.mu.Lock()
			d.rebooting = false
			d.mu.Unlock()
		}
	}()
	for {
		if sl := d.uartLog.Load(); sl != nil && !d.poweredOff.Load() {
			sl.booting() // its boot output goes out on the serial port
		}
		again, err := d.boot()
		if err != nil {
			return err
		}
		if !again {
			break
		}
		if !d.offFor(d.cfg.RebootDelay) {
			return d.life.Err()
		}
	}
	d.mu.Lock()
	bricked, slot := d.bricked, d.running
	d.mu.Unlock()
	if bricked {
		// Off for good, as a real one boot-looping would be.
		d.offOnce.Do(func() { close(d.off) })
		return fmt.Errorf("emulator: the firmware in slot %d crashes at boot and is committed: the device is bricked (remove the state dir, or edit its bootstate.json, to recover)", slot)
	}
	if d.poweredOff.Load() {
		return nil
	}
	// The device answers on each transport as soon as it is up: one that
	// takes its time (an MQTT broker that does not answer) does not hold
	// up the others. State.Online waits for all of them.
	d.mu.Lock()
	d.answering = !d.poweredOff.Load() && !d.closed
	d.mu.Unlock()
	if err := d.startListeners(ctx); err != nil {
		d.mu.Lock()
		d.answering = false
		d.mu.Unlock()
		return err
	}
	d.mu.Lock()
	d.online = d.answering && !d.poweredOff.Load() && !d.closed
	d.rebooting = false
	wentOnline = true
	d.mu.Unlock()
	return nil
}

// boot is one boot of the device from its persisted boot state. It
// returns again=true when the firmware crashed during a first boot and the
// device must boot once more (into the reverted slot).
func (d *Device) boot() (again bool, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.poweredOff.Load() {
		return false, ErrPowerCut
	}
	p, err := d.fl.loadBoot()
	if err != nil {
		return false, err
	}
	d.boots++
	d.bricked = false
	d.rebootAt = time.Time{}
	d.status = otaStatus{}
	if d.epochStop != nil {
		d.epochStop()
	}
	d.epoch, d.epochStop = context.WithCancel(d.life)
	d.bootTime = d.clock.Now()
	m, merr := d.fl.loadManifest(p.ActiveSlot)
	behavior := BehaviorOK
	if merr == nil {
		behavior = firmwareBehavior(m)
	}
	crashed := merr != nil || behavior == BehaviorCrashOnBoot
	why := any(merr) // what the crash log says
	if merr == nil {
		why = BehaviorAttribute + " " + behavior
		if raw, ok := m.Extra[BehaviorAttribute]; ok && behavior == BehaviorOK && string(raw) != `"`+BehaviorOK+`"` {
			d.log.Warn("unknown "+BehaviorAttribute+": booting as \"ok\" (known: ok, crash_on_boot, no_rpc)", "value", string(raw))
		}
		if !crashed && !p.IsCommitted && d.cfg.CrashOnNewFirmware && d.newFirmwareLocked(p, m) {
			crashed, why = true, "this device crashes on booting a new firmware (CrashOnNewFirmware, --fail-rate)"
		}
	}
	d.running, d.manifest, d.behavior = p.ActiveSlot, m, behavior
	if merr == nil {
		d.setHealthLocked(d.firmwareHealth(m))
	}
	if p.IsCommitted {
		d.mem = p
		if crashed {
			d.log.Error("firmware crashed during init and is committed: the device is bricked", "slot", p.ActiveSlot, "cause", why)
			d.bricked = true
		} else {
			d.log.Info("booted", "slot", p.ActiveSlot, "version", m.Version, "build_id", m.BuildID)
		}
		return false, nil
	}
	// First boot after an update (or a SetBootState that uncommitted):
	// first point the persisted state back at the revert slot.
	tomb := BootState{ActiveSlot: p.RevertSlot, IsCommitted: true, RevertSlot: p.RevertSlot}
	if err := d.fl.saveBoot(tomb); err != nil {
		return false, fmt.Errorf("writing boot state: %w", err)
	}
	d.mem = BootState{ActiveSlot: p.ActiveSlot, IsCommitted: false, RevertSlot: p.RevertSlot, CommitTimeout: p.CommitTimeout}
	if crashed {
		d.log.Error("firmware failed to init on first boot: reverting", "slot", p.ActiveSlot, "cause", why)
		d.mem = tomb
		return true, nil
	}
	d.log.Info("first boot", "slot", p.ActiveSlot, "version", m.Version, "build_id", m.BuildID, "revert_slot", p.RevertSlot)
	if p.RevertSlot != p.ActiveSlot {
		if err := d.fl.mergeFS(p.RevertSlot, p.ActiveSlot); err != nil {
			if errors.Is(err, ErrPowerCut) {
				return false, err
			}
			d.log.Error("filesystem merge failed", "err", err)
		}
	}
	if p.CommitTimeout > 0 {
		d.log.Info(wire.ArmingCommitWatchdog(p.CommitTimeout))
		epoch := d.epoch
		d.commitTimer = d.clock.AfterFunc(time.Duration(p.CommitTimeout)*time.Second, func() { d.commitTimeout(epoch) })
		return false, nil
	}
	if err := d.commitLocked(); err != nil {
		return false, err
	}
	return false, nil
}

// newFirmwareLocked reports whether m, booted uncommitted from p's active
// slot, is a new firmware for Config.CrashOnNewFirmware: its build_id
// differs from that of the revert slot's firmware (or that slot holds none
// that can be read).
func (d *Device) newFirmwareLocked(p BootState, m *bundle.Manifest) bool {
	if p.ActiveSlot == p.RevertSlot {
		return false
	}
	old, err := d.fl.loadManifest(p.RevertSlot)
	return err != nil || old.BuildID != m.BuildID
}

func firmwareBehavior(m *bundle.Manifest) string {
	raw, ok := m.Extra[BehaviorAttribute]
	if !ok {
		return BehaviorOK
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return BehaviorOK
	}
	switch s {
	case BehaviorCrashOnBoot, BehaviorNoRPC:
		return s
	}
	return BehaviorOK
}

// commitTimeout is the commit timer's expiry.
func (d *Device) commitTimeout(epoch context.Context) {
	d.mu.Lock()
	if d.epoch != epoch || epoch.Err() != nil || d.mem.IsCommitted {
		d.mu.Unlock()
		return
	}
	d.commitTimer = nil
	d.log.Error(wire.MsgCommitTimeoutExpired)
	err := d.revertLocked()
	d.mu.Unlock()
	if err != nil {
		d.log.Error("revert failed", "err", err)
	}
	d.requestReboot(0)
}

// commitLocked makes the running firmware permanent.
func (d *Device) commitLocked() error {
	if err := d.settleLocked(d.mem.ActiveSlot); err != nil {
		return err
	}
	d.log.Info("committed", "slot", d.mem.ActiveSlot)
	return nil
}

// revertLocked points the boot state at the revert slot, committed.
func (d *Device) revertLocked() error {
	return d.settleLocked(d.mem.RevertSlot)
}

// settleLocked persists {active, revert unchanged, committed}, makes it the
// reported state and disarms the commit timer: the end of a trial, either
// way.
func (d *Device) settleLocked(active int) error {
	st := BootState{ActiveSlot: active, IsCommitted: true, RevertSlot: d.mem.RevertSlot}
	if err := d.fl.saveBoot(st); err != nil {
		return err
	}
	d.mem = st
	if d.commitTimer != nil {
		d.commitTimer.Stop()
		d.commitTimer = nil
	}
	return nil
}

func (d *Device) statusMsgLocked() string {
	if d.status.msg != "" {
		return d.status.msg
	}
	return d.status.state.Word()
}

func (d *Device) uptime() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return int64(d.clock.Now().Sub(d.bootTime) / time.Second)
}

func transportName(l Listener) string {
	if infos := l.Info(); len(infos) > 0 {
		return infos[0].Transport
	}
	return fmt.Sprintf("%T", l)
}
