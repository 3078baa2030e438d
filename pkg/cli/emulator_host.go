package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/otactl/otactl/pkg/device/emulator"
)

// hosted reports whether the command runs a host of devices (--count > 1,
// or an --id-prefix given): each device at --state-dir/<id>/ and /<id>/rpc.
// Otherwise it runs the one device of old: --state-dir, /rpc, --id.
func (o *EmulatorOptions) hosted() bool {
	return o.Count > 1 || (o.flags != nil && o.flags.Changed("id-prefix"))
}

// checkFleetFlags checks --count, --id-prefix, --fail-rate and the
// inventory flags.
func (o *EmulatorOptions) checkFleetFlags() error {
	if o.Count < 1 {
		return usageErrorf("--count must be at least 1")
	}
	if math.IsNaN(o.FailRate) || o.FailRate < 0 || o.FailRate > 1 {
		return usageErrorf("--fail-rate %v: give a share from 0 to 1 (0.05 makes 5 %% of the devices fail)", o.FailRate)
	}
	switch o.InventoryTransport {
	case "", "mqtt", "http", "ws", "serial":
	default:
		return usageErrorf("--inventory-transport %q: want mqtt, http, ws or serial", o.InventoryTransport)
	}
	if o.InventoryTransport != "" && o.InventoryFile == "" {
		return usageErrorf("--inventory-transport needs --inventory-file")
	}
	has := map[string]bool{"mqtt": o.MQTTBroker != "", "http": o.Listen != "", "ws": o.Listen != "", "serial": o.SerialLink != ""}
	if t := o.InventoryTransport; t != "" && !has[t] {
		flag := map[string]string{"mqtt": "--mqtt-broker", "http": "--listen", "ws": "--listen", "serial": "--serial-link"}[t]
		return usageErrorf("--inventory-transport %s: the devices have no %s transport: add %s or pick another", t, t, flag)
	}
	if !o.hosted() {
		return nil
	}
	if o.flags != nil && o.flags.Changed("id") {
		return usageErrorf("--id names a single device: with --count the ids are --id-prefix and a number (%s)", strings.Join(deviceIDs(o.IDPrefix, min(o.Count, 2)), ", ")+", …")
	}
	if err := emulator.CheckHostedID(deviceIDs(o.IDPrefix, 1)[0]); err != nil {
		return usageErrorf("--id-prefix %q: %v", o.IDPrefix, strings.TrimPrefix(err.Error(), "emulator: "))
	}
	if o.SerialLink != "" {
		if fi, err := os.Stat(o.SerialLink); err == nil && !fi.IsDir() {
			return usageErrorf("--serial-link %s: with --count it names a directory, for one link per device (PATH/<id>)", o.SerialLink)
		}
	}
	return nil
}

// deviceIDs returns the ids of a host of count devices: prefix and the
// number from 1, zero-padded to four digits or to the width of count.
func deviceIDs(prefix string, count int) []string {
	width := max(4, len(strconv.Itoa(count)))
	ids := make([]string, count)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s%0*d", prefix, width, i+1)
	}
	return ids
}

// runEmulatorHost runs --count devices in one process (emulator.Host).
func runEmulatorHost(ctx context.Context, o *EmulatorOptions) error {
	ios := o.F.IO
	signing, err := emulatorSigning(o)
	if err != nil {
		return err
	}
	auth, tlsConf, err := o.Security.config(o.flags)
	if err != nil {
		return err
	}
	errOut := &syncWriter{w: ios.ErrOut}
	logger := func(id string) *slog.Logger {
		if o.Quiet {
			return nil
		}
		return slog.New(newDeviceLogHandler(errOut, id))
	}
	serialDir := o.SerialLink
	if serialDir != "" {
		if abs, err := filepath.Abs(serialDir); err == nil {
			serialDir = abs
		}
		if err := os.MkdirAll(serialDir, 0o755); err != nil {
			return fmt.Errorf("--serial-link: %w", err)
		}
	}
	h, err := emulator.NewHost(ctx, emulator.HostConfig{
		Listen: o.Listen, MQTTBroker: o.MQTTBroker, TLS: tlsConf,
		FailRate: o.FailRate, Seed: o.Seed, Logger: logger("emulator"),
	})
	if err != nil {
		return fmt.Errorf("starting the emulator: %w", err)
	}
	defer h.Close()
	ids := deviceIDs(o.IDPrefix, o.Count)
	cfgs := make([]emulator.Config, len(ids))
	for i, id := range ids {
		cfgs[i] = emulator.Config{
			Auth: auth, Signing: signing,
			StateDir: filepath.Join(o.StateDir, id), ID: id, Platform: o.Platform, Slots: o.Slots, FlashSync: o.FlashSync,
			RebootDelay: o.RebootDelay, SerialBaud: o.SerialBaud, CAFile: o.CAFile, Logger: logger(id),
		}
		if serialDir != "" {
			cfgs[i].SerialLink = filepath.Join(serialDir, id)
		}
	}
	devs, err := h.AddDevices(ctx, cfgs)
	if err != nil {
		return fmt.Errorf("starting the emulator: %w", err)
	}

	fmt.Fprintf(ios.Out, "emulator: %d devices %s … %s (%s, %d slots), flash in %s\n",
		len(devs), ids[0], ids[len(ids)-1], o.Platform, o.Slots, filepath.Join(o.StateDir, "{id}"))
	printRunning(ios.Out, devs)
	o.Security.describe(ios.Out, auth, tlsConf)
	if signing != nil {
		fmt.Fprintf(ios.Out, "signed updates: update.sig_req_mask %d (%s)\n", signing.ReqMask, maskWord(signing.ReqMask))
	}
	var failing []string
	for _, d := range devs {
		if d.State().CrashOnNewFirmware {
			failing = append(failing, d.ID())
		}
	}
	if o.FailRate > 0 {
		fmt.Fprintf(ios.Out, "fail rate %g (seed %d): %d of %d devices crash on booting a new firmware%s\n",
			o.FailRate, o.Seed, len(failing), len(devs), listSome(failing, 10))
	}
	for _, l := range h.Listeners() {
		fmt.Fprintf(ios.Out, "listening: %-6s %s\n", l.Transport, l.Addr)
	}
	if serialDir != "" {
		fmt.Fprintf(ios.Out, "listening: %-6s %s\n", "serial", filepath.Join(serialDir, "{id}"))
	}

	addrs := make([]deviceAddrs, len(devs))
	for i, d := range devs {
		addrs[i] = deviceAddrs{id: d.ID(), infos: d.Listeners()}
	}
	// The inventory first: a script that waits for the ready file finds
	// the inventory written (or, if it could not be, no ready file).
	if o.InventoryFile != "" {
		if err := writeInventory(o, addrs); err != nil {
			return err
		}
	}
	if o.ReadyFile != "" {
		if err := writeHostReady(o, h, devs, addrs, failing); err != nil {
			return err
		}
	}
	<-ctx.Done()
	fmt.Fprintln(errOut, "emulator: stopping")
	return h.Close()
}

// printRunning says which firmware the devices run, one line per firmware.
func printRunning(w io.Writer, devs []*emulator.Device) {
	type fw struct {
		app, version string
		committed    bool
	}
	counts := map[fw]int{}
	for _, d := range devs {
		s := d.State()
		counts[fw{s.App, s.Version, s.Boot.IsCommitted}]++
	}
	keys := make([]fw, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if counts[a] != counts[b] {
			return counts[a] > counts[b]
		}
		if a.app != b.app {
			return a.app < b.app
		}
		if a.version != b.version {
			return a.version < b.version
		}
		return a.committed && !b.committed
	})
	for _, k := range keys {
		fmt.Fprintf(w, "running: %d × %s %s, %s\n", counts[k], k.app, k.version, committedWord(k.committed))
	}
}

// listSome returns ": a, b, c" with at most n items and how many more.
func listSome(items []string, n int) string {
	if len(items) == 0 {
		return ""
	}
	if len(items) <= n {
		return ": " + strings.Join(items, ", ")
	}
	return fmt.Sprintf(": %s and %d more (the ready file lists them)", strings.Join(items[:n], ", "), len(items)-n)
}

// writeHostReady writes the ready file of a host: the one-device format
// ("listeners": the first device's) grown with the host's addresses and a
// "devices" array.
func writeHostReady(o *EmulatorOptions, h *emulator.Host, devs []*emulator.Device, addrs []deviceAddrs, failing []string) error {
	type device struct {
		ID                 string       `json:"id"`
		StateDir           string       `json:"state_dir"`
		CrashOnNewFirmware bool         `json:"crash_on_new_firmware"`
		Listeners          []readyEntry `json:"listeners"`
	}
	connected := 0
	list := make([]device, len(devs))
	for i, d := range devs {
		s := d.State()
		if s.MQTTConnected {
			connected++
		}
		list[i] = device{ID: d.ID(), StateDir: filepath.Join(o.StateDir, d.ID()), CrashOnNewFirmware: s.CrashOnNewFirmware,
			Listeners: readyListeners(addrs[i].infos)}
	}
	if failing == nil {
		failing = []string{}
	}
	doc := struct {
		Listeners     []readyEntry `json:"listeners"`
		Count         int          `json:"count"`
		HTTP          string       `json:"http,omitempty"`
		Broker        string       `json:"broker,omitempty"`
		MQTTConnected *int         `json:"mqtt_connected,omitempty"`
		FailRate      float64      `json:"fail_rate"`
		Seed          int64        `json:"seed"`
		Failing       []string     `json:"failing"`
		Devices       []device     `json:"devices"`
	}{Listeners: list[0].Listeners, Count: len(devs), HTTP: h.HTTPURL(), Broker: h.BrokerURL(),
		FailRate: o.FailRate, Seed: o.Seed, Failing: failing, Devices: list}
	if doc.Broker != "" {
		doc.MQTTConnected = &connected
	}
	return writeJSONFile("--ready-file", o.ReadyFile, doc)
}

// deviceAddrs is where one device is reachable.
type deviceAddrs struct {
	id    string
	infos []emulator.ListenerInfo
}

// writeInventory writes one address per device, one per line, for otactl
// fleet: the transport of --inventory-transport, or the first of mqtt,
// http, serial the devices have. Broker credentials are left out: a file
// of addresses must not hold a password.
func writeInventory(o *EmulatorOptions, devs []deviceAddrs) error {
	want := o.InventoryTransport
	if want == "" && len(devs) > 0 {
		for _, t := range []string{"mqtt", "http", "serial"} {
			if inventoryAddr(devs[0].infos, t) != "" {
				want = t
				break
			}
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# otactl emulator: %d device(s), one %s address per line\n", len(devs), want)
	for _, d := range devs {
		a := inventoryAddr(d.infos, want)
		if a == "" {
			return fmt.Errorf("--inventory-file: device %s has no %s address", d.id, want)
		}
		b.WriteString(a)
		b.WriteByte('\n')
	}
	return writeFileAtomic("--inventory-file", o.InventoryFile, []byte(b.String()))
}

// inventoryAddr is the address of transport t in infos ("http" stands for
// https too, "ws" for wss), without user info; "" when there is none.
func inventoryAddr(infos []emulator.ListenerInfo, t string) string {
	for _, l := range infos {
		if l.Transport != t && l.Transport != t+"s" {
			continue
		}
		if u, err := url.Parse(l.Addr); err == nil && u.User != nil {
			u.User = nil
			return u.String()
		}
		return l.Addr
	}
	return ""
}

// syncWriter serialises the writes of many devices' logs.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
