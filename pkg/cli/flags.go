package cli

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Flags otactl shares between commands come in two kinds:
//
//   - output flags (--json, --verbose, --no-color) on every command;
//   - device flags (--port, --device, --config, --timeout, --rpc-creds, the
//     TLS and serial flags) on the commands that talk to a device.
//
// The root command carries every one of them, hidden, so that a flag given
// before the command name (`otactl --port X bootstate`) is parsed whatever
// the command; each device command carries visible copies bound to the
// same variables. A command that talks to no device (bundle, completion,
// emulator, devices …) is marked offline: its help and completion list no
// device flag, and a device flag given to it is a usage error.
const (
	// annotGlobal marks a flag fed from OTACTL_<FLAG> and MOS_<FLAG>.
	annotGlobal = "otactl/global"
	// annotDevice marks a device flag.
	annotDevice = "otactl/device"
	// annotOffline marks a command (and its subcommands) that talks to no
	// device.
	annotOffline = "otactl/offline"
	// annotOwnDevices marks a command that chooses its devices itself
	// (fleet): --port, --device and the config's devices are not resolved
	// for it.
	annotOwnDevices = "otactl/own-devices"
)

// markOffline marks cmd as talking to no device.
func markOffline(cmd *cobra.Command) *cobra.Command {
	if cmd.Annotations == nil {
		cmd.Annotations = map[string]string{}
	}
	cmd.Annotations[annotOffline] = "true"
	return cmd
}

// hasAnnotation reports whether cmd or one of its parents carries key.
func hasAnnotation(cmd *cobra.Command, key string) bool {
	for c := cmd; c != nil; c = c.Parent() {
		if c.Annotations[key] != "" {
			return true
		}
	}
	return false
}

// isOffline reports whether cmd talks to no device. Cobra's own commands
// (help, completion, __complete) are offline too, and so are `version` and
// `ports` (which lists the serial ports, and opens none).
func isOffline(cmd *cobra.Command) bool {
	for c := cmd; c != nil && c.HasParent(); c = c.Parent() {
		switch c.Name() {
		case "help", "completion", "version", "ports", cobra.ShellCompRequestCmd, cobra.ShellCompNoDescRequestCmd:
			return true
		}
	}
	return hasAnnotation(cmd, annotOffline)
}

// onceString is a string flag that counts how often it was given, so that a
// repeated --port is refused (by prepare, which does not print the values:
// a URL may hold a password).
type onceString struct {
	p *string
	n *int
}

func (o onceString) String() string {
	if o.p == nil {
		return ""
	}
	return *o.p
}

func (o onceString) Set(s string) error {
	*o.p = s
	*o.n++
	return nil
}

func (o onceString) Type() string { return "string" }

// addOutputFlags binds the output flags to fs.
func (f *Factory) addOutputFlags(fs *pflag.FlagSet) {
	g := &f.G
	fs.BoolVar(&g.JSON, "json", false, "machine-readable output: one JSON document on stdout")
	fs.BoolVarP(&g.Verbose, "verbose", "v", false, "show frames and device log lines on stderr")
	fs.BoolVar(&g.NoColor, "no-color", false, "no colour in output (also: NO_COLOR env)")
	fs.VisitAll(func(fl *pflag.Flag) { annotate(fl, annotGlobal) })
}

// deviceFlags returns a new set of the device flags, bound to f.G. skip
// names flags to leave out.
func (f *Factory) deviceFlags(skip ...string) *pflag.FlagSet {
	g := &f.G
	fs := pflag.NewFlagSet("device", pflag.ContinueOnError)
	fs.Var(onceString{p: &g.Port, n: &f.portGiven}, "port", "device address: serial path (/dev/ttyUSB0, COM3; auto: the only USB serial port), http://host/rpc, ws://host/rpc, mqtt://broker/DEVICE_ID, the TLS forms, or a configured device's name (env OTACTL_PORT, then MOS_PORT)")
	fs.Var(onceString{p: &g.Device, n: &f.deviceGiven}, "device", "a device named in the config file: its port, credentials and certificates (env OTACTL_DEVICE; 'otactl devices' lists them)")
	fs.StringVar(&g.Config, "config", "", "config file of named devices (env OTACTL_CONFIG; default $XDG_CONFIG_HOME/otactl/config.yaml or ~/.config/otactl/config.yaml)")
	if g.Timeout == 0 {
		g.Timeout = 20 * time.Second
	}
	fs.Var(secondsFlag{d: &g.Timeout}, "timeout", "how long to wait for the device to answer (seconds, or 1m)")
	fs.StringVar(&g.RPCCreds, "rpc-creds", "", "RPC credentials user:pass, or @FILE holding them (env OTACTL_RPC_CREDS): answer the device's digest challenge (in-frame, HTTP, WebSocket handshake)")
	fs.StringVar(&g.CACertFile, "ca-cert-file", "", "CA certificate(s) (PEM) to verify the device or broker (TLS ports)")
	fs.StringVar(&g.CertFile, "cert-file", "", "client certificate (PEM) for TLS ports")
	fs.StringVar(&g.KeyFile, "key-file", "", "client private key (PEM) for --cert-file")
	fs.BoolVar(&g.Insecure, "insecure", false, "do not verify the TLS certificate of the device or broker (tests only: anyone on the path can then read and change the traffic)")
	fs.StringVar(&g.TLSServerName, "tls-server-name", "", "check the device's TLS certificate against this name (for a device addressed by IP whose certificate names a host)")
	fs.IntVar(&g.BaudRate, "baud-rate", 115200, "serial port speed")
	fs.BoolVar(&g.HWFlow, "hw-flow-control", false, "serial RTS/CTS hardware flow control")
	out := pflag.NewFlagSet("device", pflag.ContinueOnError)
	fs.VisitAll(func(fl *pflag.Flag) {
		if contains(skip, fl.Name) {
			return
		}
		annotate(fl, annotGlobal)
		if fl.Name != "config" {
			annotate(fl, annotDevice)
		}
		out.AddFlag(fl)
	})
	return out
}

func annotate(fl *pflag.Flag, key string) {
	if fl.Annotations == nil {
		fl.Annotations = map[string][]string{}
	}
	fl.Annotations[key] = []string{"true"}
}

// addDeviceFlags gives every command of root that talks to a device
// visible device flags (fleet's without --port and --device: it takes its
// devices from its own flags), and root hidden ones.
func (f *Factory) addDeviceFlags(root *cobra.Command) {
	hidden := f.deviceFlags()
	hidden.VisitAll(func(fl *pflag.Flag) { fl.Hidden = true })
	root.PersistentFlags().AddFlagSet(hidden)
	for _, c := range root.Commands() {
		switch {
		case isOffline(c):
		case c.Annotations[annotOwnDevices] != "":
			c.PersistentFlags().AddFlagSet(f.deviceFlags("port", "device"))
		default:
			c.PersistentFlags().AddFlagSet(f.deviceFlags())
		}
	}
}

// prepare runs before every command: environment variables, then checks of
// the shared flags, then the named device (flag > environment > config
// file).
func (f *Factory) prepare(cmd *cobra.Command) error {
	fs := cmd.Flags()
	offline := isOffline(cmd)
	if offline {
		var given []string
		fs.VisitAll(func(fl *pflag.Flag) {
			if fl.Changed && fl.Annotations[annotDevice] != nil {
				given = append(given, "--"+fl.Name)
			}
		})
		if len(given) > 0 {
			verb := "does"
			if len(given) > 1 {
				verb = "do"
			}
			return usageErrorf("%s %s not apply to `%s`: it talks to no device", strings.Join(given, ", "), verb, cmd.CommandPath())
		}
	}
	fromEnv, err := applyEnv(fs, f.Getenv, offline)
	if err != nil {
		return err
	}
	f.explicit = map[string]bool{}
	fs.VisitAll(func(fl *pflag.Flag) {
		if fl.Annotations[annotGlobal] != nil && (fl.Changed || fromEnv[fl.Name]) {
			f.explicit[fl.Name] = true
		}
	})
	if offline {
		return nil
	}
	if f.portGiven > 1 {
		return usageErrorf("--port given %d times: give one device (several devices: otactl fleet)", f.portGiven)
	}
	if f.deviceGiven > 1 {
		return usageErrorf("--device given %d times: give one device (several devices: otactl fleet --device NAME ...)", f.deviceGiven)
	}
	if f.G.Timeout <= 0 {
		return usageErrorf("--timeout must be positive")
	}
	f.timeoutSet = f.explicit["timeout"]
	if !hasAnnotation(cmd, annotOwnDevices) {
		if err := f.resolveDevice(fromEnv); err != nil {
			return err
		}
	}
	return nil
}

// config loads the config file once (--config, OTACTL_CONFIG, or the
// default path).
func (f *Factory) config() (*Config, error) {
	if f.cfg != nil {
		return f.cfg, nil
	}
	cfg, err := loadConfig(f.G.Config, f.Getenv)
	if err != nil {
		return nil, err
	}
	f.cfg = cfg
	return cfg, nil
}

// resolveDevice applies the device named by --device (or OTACTL_DEVICE),
// or by a --port that is a configured device's name, to f.G: every setting
// of the device that no flag and no environment variable gives.
func (f *Factory) resolveDevice(fromEnv map[string]bool) error {
	name, byPort := f.G.Device, false
	if name == "" && nameRE.MatchString(f.G.Port) && f.G.Port != "auto" {
		cfg, err := f.config()
		if err != nil {
			return err
		}
		if cfg.Device(f.G.Port) != nil {
			name, byPort = f.G.Port, true
		}
	}
	if name == "" {
		return nil
	}
	cfg, err := f.config()
	if err != nil {
		return err
	}
	p := cfg.Device(name)
	if p == nil {
		where := "the config file " + cfg.Path
		if cfg.Path == "" {
			path := defaultConfigPath(f.Getenv)
			where = "no config file (looked for " + path + ")"
			return usageErrorf("--device %s: %s: name your devices there (docs/commands.md, \"Named devices\"), or give --port", name, where)
		}
		names := cfg.DeviceNames()
		known := "it names no device"
		if len(names) > 0 {
			known = "it names " + strings.Join(names, ", ")
		}
		return usageErrorf("--device %s: no such device in %s (%s)", name, where, known)
	}
	explicit := f.explicit
	if byPort {
		explicit = map[string]bool{}
		for k, v := range f.explicit {
			explicit[k] = v
		}
		delete(explicit, "port")
	} else if explicit["port"] && fromEnv["port"] && !fromEnv["device"] {
		fmt.Fprintf(f.IO.ErrOut, "note: the port of device %s comes from the environment (OTACTL_PORT or MOS_PORT), which overrides the config file\n", name)
	}
	if p.Timeout != nil {
		// The file's timeout stands for --timeout (push's wait for a lost
		// link follows a given timeout).
		f.timeoutSet = true
	}
	return p.apply(&f.G, explicit)
}
