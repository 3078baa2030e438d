package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/otactl/otactl/pkg/device/emulator"
	"github.com/otactl/otactl/pkg/ota/bundle"
)

// EmulatorOptions are the inputs of `otactl emulator`.
type EmulatorOptions struct {
	F           *Factory
	StateDir    string
	ID          string
	Platform    string
	Slots       int
	FlashSync   bool
	Listen      string
	SerialLink  string
	SerialBaud  int
	MQTTBroker  string
	RebootDelay time.Duration
	CAFile      string
	ReadyFile   string
	Quiet       bool
	// Many devices in one process (docs/emulator.md, "Many devices"):
	// --count, --id-prefix, --fail-rate, --seed, --inventory-file,
	// --inventory-transport.
	Count              int
	IDPrefix           string
	FailRate           float64
	Seed               int64
	InventoryFile      string
	InventoryTransport string
	// UpdateKeys are the device's update.key0..key7 (--update-key);
	// SigReqMask its update.sig_req_mask (--sig-req-mask).
	UpdateKeys []string
	SigReqMask string
	// Security: RPC auth, ACL and TLS (--auth-file, --acl, --tls-cert…).
	Security emulatorSecurity
	flags    *pflag.FlagSet
}

// NewCmdEmulator builds `otactl emulator`.
func NewCmdEmulator(f *Factory, runF func(context.Context, *EmulatorOptions) error) *cobra.Command {
	o := &EmulatorOptions{F: f}
	cmd := &cobra.Command{
		Use:   "emulator --state-dir DIR [--count N] [--listen ADDR] [--serial-link PATH] [--mqtt-broker URL]",
		Short: "Run an emulated Mongoose OS device for tests and CI",
		Long: `Run an emulated Mongoose OS device: the OTA slot state machine of a real one
(streaming bundle checks, uncommitted first boot, commit timer, rollback,
snapshots), served over HTTP and WebSocket (--listen), a serial pty
(--serial-link) and MQTT (--mqtt-broker), any of them at once; secured like a
device in the field if you like: RPC users and ACLs (--auth-file, --acl), TLS
(--tls-cert, --tls-client-ca) and signed bundles (--update-key); see
docs/security.md.

Its flash lives in --state-dir: killing the process is a power cut, starting
it again on the same directory is a boot. A new directory gets a factory
firmware (1.0.0) in slot 0, committed. It runs until SIGINT or SIGTERM and
prints one line per way to reach it. See docs/emulator.md.

With --count N it runs N independent devices (dev-0001, dev-0002, …; see
--id-prefix), each with its flash in --state-dir/<id>/ and its own MQTT
connection to one broker, all behind one HTTP listener at /<id>/rpc;
--fail-rate makes a share of them crash on booting a new firmware, to
rehearse a fleet rollout. --inventory-file lists their addresses for
otactl fleet.`,
		Example: `  # HTTP and WebSocket on one port
  otactl emulator --state-dir /tmp/dev1 --listen 127.0.0.1:8080 &
  otactl --port http://127.0.0.1:8080/rpc bootstate

  # a serial link and an in-process MQTT broker, no install needed
  otactl emulator --state-dir /tmp/dev1 --serial-link /tmp/ttyDEV1 --mqtt-broker embedded:127.0.0.1:1883
  otactl --port /tmp/ttyDEV1 call Sys.GetInfo
  otactl --port mqtt://127.0.0.1:1883/dev1 call Sys.GetInfo

  # a fleet of 200 devices behind one embedded broker, 5 % of them failing
  otactl emulator --count 200 --state-dir /tmp/fleet --mqtt-broker embedded:127.0.0.1:1883 \
    --listen 127.0.0.1:8080 --fail-rate 0.05 --seed 7 --inventory-file /tmp/fleet/devices.txt
  otactl --port mqtt://127.0.0.1:1883/dev-0002 bootstate
  otactl --port http://127.0.0.1:8080/dev-0002/rpc bootstate

  # a device that takes only bundles signed by key 0 (docs/security.md)
  otactl bundle keygen -o k0.pem
  otactl emulator --state-dir /tmp/dev1 --listen 127.0.0.1:8080 --update-key k0.pub.pem --sig-req-mask 1 &
  otactl bundle create -o fw.zip --platform esp32 --version 1.2.0 --sign-key k0.pem app:src=app.bin
  otactl --port http://127.0.0.1:8080/rpc update --file fw.zip --pubkey k0.pub.pem --commit

  # a secured device: users, an ACL, TLS with client certificates, signed bundles
  printf 'admin:RPC:%s\n' "$(printf admin:RPC:s3cret | md5sum | cut -d' ' -f1)" > users.htdigest
  otactl emulator --state-dir /tmp/dev1 --listen 127.0.0.1:8443 \
    --auth-file users.htdigest --acl '[{"method":"Sys.GetInfo","acl":"*"},{"method":"*","acl":"+admin"}]' \
    --tls-cert dev.pem --tls-key dev.key --tls-client-ca ca.pem \
    --update-key k0.pub.pem --sig-req-mask 1 &
  otactl --port https://127.0.0.1:8443/rpc --rpc-creds admin:s3cret --ca-cert-file ca.pem \
    --cert-file me.pem --key-file me.key update --file fw.zip --pubkey k0.pub.pem --commit`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.StateDir == "" {
				return usageErrorf("--state-dir is required: the directory that holds the emulated flash (created if missing)")
			}
			if o.Listen == "" && o.SerialLink == "" && o.MQTTBroker == "" {
				return usageErrorf("give at least one transport: --listen ADDR, --serial-link PATH or --mqtt-broker URL|embedded")
			}
			if o.Slots < 2 {
				return usageErrorf("--slots must be at least 2")
			}
			if err := o.checkFleetFlags(); err != nil {
				return err
			}
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return runEmulator(cmd.Context(), o)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&o.StateDir, "state-dir", "", "directory holding the emulated flash (required)")
	fl.StringVar(&o.ID, "id", emulator.DefaultID, "device id (frame src, MQTT topics)")
	fl.StringVar(&o.Platform, "platform", emulator.DefaultPlatform, "device platform, checked against bundles")
	fl.IntVar(&o.Slots, "slots", emulator.DefaultSlots, "number of firmware slots")
	fl.BoolVar(&o.FlashSync, "flash-sync", false, "fsync every flash write, so that --state-dir also survives a crash of this machine (slower)")
	fl.StringVar(&o.Listen, "listen", "", "HTTP /rpc, /rpc/<Method> and WebSocket /rpc on this address (e.g. 127.0.0.1:8080; port 0 picks one)")
	fl.StringVar(&o.SerialLink, "serial-link", "", "create a pty and a symlink at PATH to its device end")
	fl.IntVar(&o.SerialBaud, "serial-baud", 0, "pace the serial link to this UART speed (e.g. 115200) to time transfers as over a cable; 0 = no limit")
	fl.StringVar(&o.MQTTBroker, "mqtt-broker", "", "connect to mqtt://host:port as the device, or 'embedded[:ADDR]' to run a broker in-process")
	fl.DurationVar(&o.RebootDelay, "reboot-delay", time.Second, "how long a reboot keeps the device off every transport")
	fl.StringVar(&o.CAFile, "download-ca-file", "", "CA certificates (PEM) trusted for HTTPS bundle downloads (default: system roots)")
	fl.StringVar(&o.ReadyFile, "ready-file", "", "once reachable, write the listeners (of every device) as JSON to this file (for scripts)")
	fl.IntVar(&o.Count, "count", 1, "run this many devices in one process: ids --id-prefix plus a number, flash in --state-dir/<id>/, HTTP at /<id>/rpc")
	fl.StringVar(&o.IDPrefix, "id-prefix", "dev-", "with --count: the devices' ids are this prefix and a zero-padded number (dev-0001, dev-0002, …)")
	fl.Float64Var(&o.FailRate, "fail-rate", 0, "share of devices (0 to 1) that crash on booting a new firmware and roll back; which ones depends only on --seed and the id")
	fl.Int64Var(&o.Seed, "seed", 0, "picks the devices --fail-rate makes fail")
	fl.StringVar(&o.InventoryFile, "inventory-file", "", "once reachable, write one device address per line to this file (the inventory otactl fleet reads)")
	fl.StringVar(&o.InventoryTransport, "inventory-transport", "", "the address --inventory-file gives each device: mqtt, http, ws or serial (default: mqtt if there is a broker, else http, else serial)")
	fl.BoolVarP(&o.Quiet, "quiet", "q", false, "do not print the device log on stderr")
	fl.StringArrayVar(&o.UpdateKeys, "update-key", nil, "[N:]PUB.pem or base64 DER: the device's update.keyN, for signed bundles (repeatable: key0, key1, … in order)")
	o.Security.addFlags(fl)
	o.flags = fl
	fl.StringVar(&o.SigReqMask, "sig-req-mask", "-1", "the device's update.sig_req_mask: -1 ignores signatures, 0 refuses every update, else each bit N requires sigN to verify with keyN (1, 0b11, 0x3)")
	return cmd
}

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageErrorf("%s takes no arguments, got %q", cmd.Name(), strings.Join(args, " "))
	}
	return nil
}

func runEmulator(ctx context.Context, o *EmulatorOptions) error {
	if o.hosted() {
		return runEmulatorHost(ctx, o)
	}
	ios := o.F.IO
	var logger *slog.Logger
	if !o.Quiet {
		logger = slog.New(newDeviceLogHandler(ios.ErrOut, o.ID))
	}
	serialLink := o.SerialLink
	if serialLink != "" {
		// The ready file and the "listening:" line give this path as the
		// --port to use: make it work from any directory.
		if abs, err := filepath.Abs(serialLink); err == nil {
			serialLink = abs
		}
	}
	signing, err := emulatorSigning(o)
	if err != nil {
		return err
	}
	auth, tlsConf, err := o.Security.config(o.flags)
	if err != nil {
		return err
	}
	cfg := emulator.Config{
		Auth:        auth,
		TLS:         tlsConf,
		Signing:     signing,
		StateDir:    o.StateDir,
		ID:          o.ID,
		Platform:    o.Platform,
		Slots:       o.Slots,
		FlashSync:   o.FlashSync,
		RebootDelay: o.RebootDelay,
		Listen:      o.Listen,
		SerialLink:  serialLink,
		SerialBaud:  o.SerialBaud,
		MQTTBroker:  o.MQTTBroker,
		CAFile:      o.CAFile,
		Logger:      logger,
		// A device on its own can fail as one of a fleet would.
		CrashOnNewFirmware: emulator.FailsNewFirmware(o.Seed, o.ID, o.FailRate),
	}
	d, err := emulator.New(cfg)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Start(ctx); err != nil {
		return fmt.Errorf("starting the emulator: %w", err)
	}
	st := d.State()
	fmt.Fprintf(ios.Out, "emulator %s (%s, %d slots): running %s %s from slot %d, %s; flash in %s\n",
		o.ID, o.Platform, o.Slots, st.App, st.Version, st.RunningSlot, committedWord(st.Boot.IsCommitted), o.StateDir)
	o.Security.describe(ios.Out, auth, tlsConf)
	if signing != nil {
		fmt.Fprintf(ios.Out, "signed updates: update.sig_req_mask %d (%s)\n", signing.ReqMask, maskWord(signing.ReqMask))
	}
	if o.FailRate > 0 {
		does := "does not crash"
		if cfg.CrashOnNewFirmware {
			does = "crashes"
		}
		fmt.Fprintf(ios.Out, "fail rate %g (seed %d): this device %s on booting a new firmware\n", o.FailRate, o.Seed, does)
	}
	infos := d.Listeners()
	for _, l := range infos {
		fmt.Fprintf(ios.Out, "listening: %-6s %s\n", l.Transport, l.Addr)
	}
	// The inventory first: a script that waits for the ready file finds
	// the inventory written (or, if it could not be, no ready file).
	if o.InventoryFile != "" {
		if err := writeInventory(o, []deviceAddrs{{id: o.ID, infos: infos}}); err != nil {
			return err
		}
	}
	if o.ReadyFile != "" {
		doc := map[string]any{"listeners": readyListeners(infos)}
		if o.FailRate > 0 {
			doc["fail_rate"], doc["seed"] = o.FailRate, o.Seed
			doc["failing"] = []string{}
			if cfg.CrashOnNewFirmware {
				doc["failing"] = []string{o.ID}
			}
		}
		if err := writeJSONFile("--ready-file", o.ReadyFile, doc); err != nil {
			return err
		}
	}
	select {
	case <-ctx.Done():
		fmt.Fprintln(ios.ErrOut, "emulator: stopping")
	case <-d.Done():
		if d.State().Bricked {
			return fmt.Errorf("the emulated device is bricked: its committed firmware crashes at boot")
		}
	}
	return d.Close()
}

// emulatorSigning builds the device's signature settings from
// --update-key and --sig-req-mask (nil: the defaults, no keys, -1).
func emulatorSigning(o *EmulatorOptions) (*bundle.SignaturePolicy, error) {
	mask, err := parseMask("--sig-req-mask", o.SigReqMask)
	if err != nil {
		return nil, err
	}
	if len(o.UpdateKeys) == 0 && mask < 0 {
		return nil, nil
	}
	p := &bundle.SignaturePolicy{ReqMask: mask}
	if p.Keys, _, err = loadPublicKeys("--update-key", o.UpdateKeys); err != nil {
		return nil, err
	}
	if mask < 0 {
		fmt.Fprintln(o.F.IO.ErrOut, "warning: --update-key without --sig-req-mask: the device ignores signatures (update.sig_req_mask -1, its default); add --sig-req-mask 1 to require key 0's")
	}
	return p, nil
}

func committedWord(c bool) string {
	if c {
		return "committed"
	}
	return "NOT committed"
}

// readyEntry is one listener in the ready file.
type readyEntry struct {
	Transport string `json:"transport"`
	Addr      string `json:"addr"`
}

func readyListeners(infos []emulator.ListenerInfo) []readyEntry {
	out := make([]readyEntry, 0, len(infos))
	for _, l := range infos {
		out = append(out, readyEntry{l.Transport, l.Addr})
	}
	return out
}

// writeJSONFile writes doc, indented, to path atomically (a temporary file,
// then a rename), so that a reader never sees half of it.
func writeJSONFile(flag, path string, doc any) error {
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return fmt.Errorf("%s: %w", flag, err)
	}
	return writeFileAtomic(flag, path, append(b, '\n'))
}

func writeFileAtomic(flag, path string, data []byte) error {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("%s: %w", flag, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("%s: %w", flag, err)
	}
	return nil
}

// deviceLogHandler prints the emulated firmware's log like a device console:
// "dev1: message key=value".
type deviceLogHandler struct {
	w     io.Writer
	id    string
	attrs []slog.Attr
}

func newDeviceLogHandler(w io.Writer, id string) *deviceLogHandler {
	return &deviceLogHandler{w: w, id: id}
}

func (h *deviceLogHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }

func (h *deviceLogHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Time.Format("15:04:05.000"))
	b.WriteString(" ")
	b.WriteString(h.id)
	b.WriteString(": ")
	b.WriteString(r.Message)
	add := func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	b.WriteString("\n")
	_, err := io.WriteString(h.w, b.String())
	return err
}

func (h *deviceLogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(append([]slog.Attr(nil), h.attrs...), attrs...)
	return &c
}

func (h *deviceLogHandler) WithGroup(string) slog.Handler { return h }
