// Package cli implements the otactl command line: one file per verb, each
// with an Options struct, a NewCmdX constructor binding its flags, and a
// runX function doing the work.
package cli

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
	"github.com/fatih/color"
	"github.com/mattn/go-isatty"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/all"
	"github.com/otactl/otactl/pkg/transport/mqtt"
	"github.com/otactl/otactl/pkg/transport/serial"
)

// Version is set at build time with -ldflags "-X ...cli.Version=...".
var Version = "dev"

// IOStreams are the command's standard streams and what they are attached to.
type IOStreams struct {
	In     io.Reader
	Out    io.Writer
	ErrOut io.Writer
	// OutTTY and ErrTTY say whether Out and ErrOut are terminals.
	OutTTY, ErrTTY bool
	// ErrWidth, if set, returns the width in columns of the terminal
	// ErrOut is attached to, or 0 if unknown. Progress bars fit in it.
	ErrWidth func() int
}

// SystemIO returns the process's streams.
func SystemIO() *IOStreams {
	return &IOStreams{
		In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr,
		OutTTY: isatty.IsTerminal(os.Stdout.Fd()) || isatty.IsCygwinTerminal(os.Stdout.Fd()),
		ErrTTY: isatty.IsTerminal(os.Stderr.Fd()) || isatty.IsCygwinTerminal(os.Stderr.Fd()),
		ErrWidth: func() int {
			// Asked at each draw, so that a resized window is followed.
			_, cols, err := pty.Getsize(os.Stderr)
			if err != nil {
				return 0
			}
			return cols
		},
	}
}

// Globals are the flags every command shares.
type Globals struct {
	Port string
	// Device names a device of the config file (--device); Config is the
	// config file (--config).
	Device, Config string
	Timeout        time.Duration
	RPCCreds       string
	CACertFile     string
	CertFile       string
	KeyFile        string
	// Insecure skips TLS verification (--insecure); TLSServerName is the
	// name the device's certificate is checked against (--tls-server-name).
	Insecure      bool
	TLSServerName string
	JSON          bool
	Verbose       bool
	NoColor       bool
	BaudRate      int
	HWFlow        bool
}

// Factory holds what commands need from the outside world; tests replace
// parts of it.
type Factory struct {
	IO       *IOStreams
	Getenv   func(string) string
	Registry *transport.Registry
	// MQTT shares one broker connection among every MQTT dial of the
	// process (Registry dials through it): the outcome wait and a push's
	// reconnects reuse it (docs/transports.md). Nil with a registry of
	// another making.
	MQTT *mqtt.Sessions
	G    Globals
	// tlsMu guards tlsConf: built once, so that every dial presents the
	// same *tls.Config and MQTT dials share their session.
	tlsMu     sync.Mutex
	tlsConf   *tls.Config
	tlsLoaded bool
	// timeoutSet is true when --timeout (or its environment variable) was
	// given, rather than defaulted.
	timeoutSet bool
	// insecureWarned is set once --insecure was warned about.
	insecureWarned bool
	// upd is the --json document of an update or push in progress.
	upd *updateResult
	// portGiven and deviceGiven count --port and --device on the command
	// line (and from the environment): more than one is a usage error.
	portGiven, deviceGiven int
	// explicit names the shared flags given on the command line or in the
	// environment: a named device's settings do not override them.
	explicit map[string]bool
	// cfg is the config file, once loaded (config).
	cfg *Config
	// notifySignals, when set, replaces signal.Notify for the signals
	// after the first (fleet update's second Ctrl-C); tests feed it.
	notifySignals func(c chan<- os.Signal)
	// ListPorts, when set, replaces serial.ListPorts (otactl ports, --port
	// auto); tests present their own ports.
	ListPorts func() ([]serial.PortInfo, error)
	// deviceLog, when set, also gets every device log line that a
	// connection sees (--device-log, devicelog.go).
	deviceLog func(line string)
}

// MainOptions replace parts of the outside world for MainWith.
type MainOptions struct {
	// ListPorts replaces the serial port enumerator (Factory.ListPorts).
	ListPorts func() ([]serial.PortInfo, error)
}

// Main runs otactl with args (without the program name) and returns the
// process exit code.
func Main(args []string, ios *IOStreams, getenv func(string) string) int {
	return MainWith(args, ios, getenv, MainOptions{})
}

// MainWith is Main with parts of the outside world replaced (tests run the
// real binary with a serial port enumerator of their own).
func MainWith(args []string, ios *IOStreams, getenv func(string) string, opts MainOptions) int {
	// SIGHUP too: a closed terminal or SSH session must still abort a push
	// cleanly (OTA.End) instead of leaving the device busy until its
	// watchdog fires.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	go func() {
		// After the first signal, restore the default handling: a second
		// Ctrl-C ends otactl at once, even in the middle of a cleanup.
		<-ctx.Done()
		stop()
	}()
	return mainContextWith(ctx, args, ios, getenv, opts)
}

// mainContext is Main with the context that signals cancel.
func mainContext(ctx context.Context, args []string, ios *IOStreams, getenv func(string) string) int {
	return mainContextWith(ctx, args, ios, getenv, MainOptions{})
}

// mainContextWith is mainContext with MainOptions.
func mainContextWith(ctx context.Context, args []string, ios *IOStreams, getenv func(string) string, opts MainOptions) int {
	stdout := &countingWriter{w: ios.Out}
	cios := *ios
	cios.Out = stdout
	reg, sessions := all.NewSharedRegistry(mqtt.SessionsOptions{})
	defer reg.Close()
	f := &Factory{IO: &cios, Getenv: getenv, Registry: reg, MQTT: sessions, ListPorts: opts.ListPorts}
	root := NewRootCmd(f)
	root.SetArgs(args)
	root.SetIn(ios.In)
	root.SetOut(stdout)
	root.SetErr(ios.ErrOut)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	err = classifyCobraError(err)
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		err = interrupted(err)
	}
	code := ExitCode(err)
	if (f.G.JSON || wantsJSON(args, getenv)) && stdout.n == 0 {
		// Scripts read one JSON document on stdout, whatever happened:
		// for update and push, an update document with result and reason.
		if c, _, ferr := root.Find(args); f.upd != nil || (ferr == nil && c != nil && updateCommands[c.Name()] && c.Parent() == root) {
			_ = f.writeUpdateDoc(f.updateDoc(), err)
		} else {
			doc := map[string]any{"error": err.Error(), "exit_code": code, "reason": reasonFor(err)}
			var re *rpc.Error
			if errors.As(err, &re) {
				doc["rpc_error"] = map[string]any{"code": re.Code, "message": re.Message}
			}
			_ = writeJSON(stdout, doc)
		}
	}
	var ee *ExitError
	if !(errors.As(err, &ee) && ee.Silent) {
		var ie *InterruptedError
		if errors.As(err, &ie) && ios.ErrTTY {
			fmt.Fprint(ios.ErrOut, "\r\033[K") // the terminal's "^C" echo
		}
		fmt.Fprintln(ios.ErrOut, f.palette().red("Error:"), err)
		var ue *UsageError
		var ce *ConfigError // about the file, not the command line
		if errors.As(err, &ue) && !errors.As(err, &ce) && !strings.Contains(err.Error(), "--help") {
			if name := commandPath(root, args); name != "" {
				fmt.Fprintf(ios.ErrOut, "Run '%s --help' for usage.\n", name)
			}
		}
	}
	return code
}

// wantsJSON reports whether --json was asked for on the command line or in
// the environment, for errors that stop otactl before its flags are parsed
// (an unknown flag or command before --json).
func wantsJSON(args []string, getenv func(string) string) bool {
	set, on := false, false
	for _, a := range args {
		if a == "--" {
			break
		}
		if a == "--json" {
			set, on = true, true
		} else if v, ok := strings.CutPrefix(a, "--json="); ok {
			b, err := strconv.ParseBool(v)
			set, on = true, err == nil && b
		}
	}
	if set {
		return on
	}
	if getenv != nil {
		for _, k := range []string{"OTACTL_JSON", "MOS_JSON"} {
			if v := getenv(k); v != "" {
				b, err := strconv.ParseBool(v)
				return err == nil && b
			}
		}
	}
	return false
}

// countingWriter counts what was written, so Main knows whether a command
// already printed its JSON document.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// classifyCobraError marks cobra's own argument errors (unknown command,
// missing required flag, wrong argument count) as usage errors.
func classifyCobraError(err error) error {
	var ue *UsageError
	if errors.As(err, &ue) {
		return err
	}
	msg := err.Error()
	for _, p := range []string{"unknown command", "required flag", "accepts ", "requires at least", "requires at most", "invalid argument", "unknown flag", "unknown shorthand flag", "flag needs an argument"} {
		if strings.HasPrefix(msg, p) {
			return &UsageError{Err: err}
		}
	}
	return err
}

func commandPath(root *cobra.Command, args []string) string {
	c, _, err := root.Find(args)
	if err != nil || c == nil {
		return root.Name()
	}
	return c.CommandPath()
}

// NewRootCmd builds the command tree.
func NewRootCmd(f *Factory) *cobra.Command {
	version := currentVersion()
	root := &cobra.Command{
		Use:   "otactl",
		Short: "Update Mongoose OS devices over the air, and know what booted",
		Long: `otactl drives the OTA service of Mongoose OS devices (the OTA.* RPC methods)
over serial, HTTP, WebSocket or MQTT, wire-compatible with 'mos call OTA.*'.

Commands that talk to a device take --port (or --device NAME, a device named
in ~/.config/otactl/config.yaml: 'otactl devices'), before or after their
name; 'otactl CMD --help' lists their flags.`,
		Example: `  otactl --port http://192.168.4.1/rpc call Sys.GetInfo
  OTACTL_PORT=/dev/ttyUSB0 otactl call OTA.GetBootState`,
		Version:       version.Version,
		SilenceErrors: true,
		SilenceUsage:  true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if err := f.prepare(cmd); err != nil {
				return err
			}
			return f.resolveAutoPort(cmd)
		},
	}
	// --version prints the line `otactl version` prints (version.go).
	root.SetVersionTemplate(strings.ReplaceAll(version.String(), "{{", "{ {") + "\n")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return &UsageError{Err: err}
	})
	f.addOutputFlags(root.PersistentFlags())

	root.AddCommand(NewCmdCall(f, nil))
	root.AddCommand(markOffline(NewCmdEmulator(f, nil)))
	root.AddCommand(markOffline(NewCmdBundle(f)))
	root.AddCommand(NewCmdBootState(f), NewCmdStatus(f), NewCmdCommit(f), NewCmdRevert(f), NewCmdSnapshot(f))
	root.AddCommand(NewCmdUpdate(f), NewCmdPush(f))
	root.AddCommand(NewCmdFleet(f))
	root.AddCommand(markOffline(NewCmdDevices(f)))
	root.AddCommand(markOffline(NewCmdVersion(f)))
	root.AddCommand(markOffline(newCmdGenMan()))
	root.AddCommand(NewCmdPorts(f), NewCmdConsole(f))
	// The completion command captures its output writer when created.
	root.SetOut(f.IO.Out)
	root.SetErr(f.IO.ErrOut)
	setupCompletion(root)
	// Last: device flags go to every command not marked offline.
	f.addDeviceFlags(root)
	f.setupDynamicCompletion(root)
	return root
}

// applyEnv fills the shared flags of fs not given on the command line from
// OTACTL_<FLAG> and then MOS_<FLAG> (e.g. OTACTL_PORT, MOS_PORT), and
// returns the names it set. For a command that talks to no device
// (offline), the device flags are left alone: OTACTL_PORT exported in a
// shell does not concern `otactl bundle create`.
func applyEnv(fs *pflag.FlagSet, getenv func(string) string, offline bool) (map[string]bool, error) {
	set := map[string]bool{}
	if getenv == nil {
		return set, nil
	}
	var err error
	fs.VisitAll(func(fl *pflag.Flag) {
		if fl.Changed || err != nil || fl.Annotations[annotGlobal] == nil || (offline && fl.Annotations[annotDevice] != nil) {
			return
		}
		key := strings.ToUpper(strings.ReplaceAll(fl.Name, "-", "_"))
		for _, prefix := range []string{"OTACTL_", "MOS_"} {
			if v := getenv(prefix + key); v != "" {
				if e := fl.Value.Set(v); e != nil {
					err = usageErrorf("environment variable %s%s=%q: %v", prefix, key, v, e)
				}
				set[fl.Name] = true
				return
			}
		}
	})
	return set, err
}

// logger returns the verbose logger, or nil.
func (f *Factory) logger() *slog.Logger {
	if !f.G.Verbose {
		return nil
	}
	return slog.New(slog.NewTextHandler(f.IO.ErrOut, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// transportOptions builds the transport options from the global flags.
func (f *Factory) transportOptions() (transport.Options, error) {
	opts := transport.Options{
		Logger:        f.logger(),
		BaudRate:      f.G.BaudRate,
		HWFlowControl: f.G.HWFlow,
	}
	if f.G.Verbose || f.deviceLog != nil {
		errOut, verbose, save := f.IO.ErrOut, f.G.Verbose, f.deviceLog
		opts.DeviceLog = func(line string) {
			if verbose {
				fmt.Fprintln(errOut, "device:", line)
			}
			if save != nil {
				save(line) // --device-log
			}
		}
	}
	creds, err := parseCreds(f.G.RPCCreds)
	if err != nil {
		return opts, err
	}
	opts.Creds = creds
	tlsConf, err := f.sharedTLSConfig()
	if err != nil {
		return opts, err
	}
	opts.TLS = tlsConf
	return opts, nil
}

// sharedTLSConfig builds the TLS configuration from the flags once and
// returns the same one every time.
func (f *Factory) sharedTLSConfig() (*tls.Config, error) {
	f.tlsMu.Lock()
	defer f.tlsMu.Unlock()
	if f.tlsLoaded {
		return f.tlsConf, nil
	}
	conf, err := f.tlsConfig()
	if err != nil {
		return nil, err
	}
	f.tlsConf, f.tlsLoaded = conf, true
	return conf, nil
}

func parseCreds(s string) (*transport.Credentials, error) {
	if s == "" {
		return nil, nil
	}
	if strings.HasPrefix(s, "@") {
		b, err := os.ReadFile(s[1:])
		if err != nil {
			return nil, usageErrorf("--rpc-creds: cannot read %s: %v", s[1:], errors.Unwrap(err))
		}
		s, _, _ = strings.Cut(string(b), "\n") // the first line, as in a netrc-style file
		s = strings.TrimSpace(s)
	}
	user, pass, ok := strings.Cut(s, ":")
	if !ok || user == "" {
		return nil, usageErrorf("--rpc-creds wants user:pass or @FILE holding user:pass")
	}
	return &transport.Credentials{User: user, Password: pass}, nil
}

// Connect dials the device named by --port and returns an RPC client.
func (f *Factory) Connect(ctx context.Context) (*rpc.Client, error) {
	opts, err := f.transportOptions()
	if err != nil {
		return nil, err
	}
	conn, err := f.Registry.Dial(ctx, f.G.Port, opts)
	if err != nil {
		if errors.Is(err, transport.ErrBadPort) || errors.Is(err, transport.ErrAuth) {
			// A usage error, refused credentials or a TLS failure say
			// what they are themselves.
			return nil, err
		}
		return nil, &UnreachableError{Err: fmt.Errorf("cannot reach the device at %s: %w", transport.RedactString(f.G.Port), err)}
	}
	return rpc.NewClient(conn, rpc.ClientOptions{Creds: opts.Creds, Logger: opts.Logger, Where: transport.RedactString(f.G.Port)}), nil
}

// palette returns colour functions for stderr, honouring --no-color,
// NO_COLOR and whether stderr is a terminal.
func (f *Factory) palette() palette { return f.paletteFor(f.IO.ErrTTY) }

// outPalette is palette for stdout.
func (f *Factory) outPalette() palette { return f.paletteFor(f.IO.OutTTY && !f.G.JSON) }

func (f *Factory) paletteFor(tty bool) palette {
	on := tty && !f.G.NoColor && (f.Getenv == nil || f.Getenv("NO_COLOR") == "")
	mk := func(attrs ...color.Attribute) func(a ...any) string {
		c := color.New(attrs...)
		if on {
			c.EnableColor()
		} else {
			c.DisableColor()
		}
		return c.Sprint
	}
	return palette{red: mk(color.FgRed, color.Bold), green: mk(color.FgGreen), yellow: mk(color.FgYellow), bold: mk(color.Bold)}
}

type palette struct {
	red, green, yellow, bold func(a ...any) string
}
