package cli

import (
	"context"
	"encoding/json"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/otactl/otactl/pkg/ota/wire"
	"github.com/otactl/otactl/pkg/transport"
)

// completeMethodsTimeout bounds the RPC.List call behind the completion of
// `otactl call METHOD`: a shell waits for it on every Tab.
const completeMethodsTimeout = time.Second

// setupDynamicCompletion registers what the shell completes beyond command
// and flag names (docs/commands.md, "completion"): --port (serial ports
// and named devices), --device (names), --inventory (names), `call`'s
// method (from the device's RPC.List, when it answers within a second),
// --file and positional bundles (*.zip), --config (*.yaml).
func (f *Factory) setupDynamicCompletion(root *cobra.Command) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, name := range []string{"port", "device", "inventory"} {
			fl := c.LocalFlags().Lookup(name)
			if fl == nil {
				fl = c.PersistentFlags().Lookup(name)
			}
			if fl == nil {
				continue
			}
			fn := f.completeDeviceNames
			switch {
			case name == "port" || (name == "device" && c.Annotations[annotOwnDevices] == "" && hasAnnotation(c, annotOwnDevices)):
				// fleet's --device takes an address too.
				fn = f.completePorts
			case name == "inventory":
				fn = f.completeInventories
			}
			_ = c.RegisterFlagCompletionFunc(name, fn) // once per flag: an error only if registered already
		}
		if fl := c.LocalFlags().Lookup("file"); fl != nil {
			_ = c.MarkFlagFilename("file", "zip")
		}
		if fl := c.LocalFlags().Lookup("config"); fl != nil {
			_ = c.MarkFlagFilename("config", "yaml", "yml")
		}
		switch c.CommandPath() {
		case "otactl push", "otactl update", "otactl ota", "otactl bundle inspect", "otactl bundle verify", "otactl bundle sign":
			if c.ValidArgsFunction == nil {
				c.ValidArgsFunction = completeBundles
			}
		case "otactl call":
			if c.ValidArgsFunction == nil {
				c.ValidArgsFunction = f.completeMethods
			}
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(root)
}

// completeBundles completes one positional bundle: *.zip files.
func completeBundles(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return []string{"zip"}, cobra.ShellCompDirectiveFilterFileExt
}

// completeDeviceNames completes the names of the config file's devices.
func (f *Factory) completeDeviceNames(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	return f.deviceNameCompletions(cmd, toComplete), cobra.ShellCompDirectiveNoFileComp
}

func (f *Factory) deviceNameCompletions(cmd *cobra.Command, toComplete string) []string {
	cfg := f.completionConfig(cmd)
	var out []string
	for _, d := range cfg.Devices {
		if strings.HasPrefix(d.Name, toComplete) {
			desc := transport.RedactString(d.Port)
			if d.Description != "" {
				desc = d.Description + " (" + desc + ")"
			}
			out = append(out, d.Name+"\t"+desc)
		}
	}
	return out
}

// completeInventories completes the names of the config file's
// inventories.
func (f *Factory) completeInventories(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	var out []string
	for _, inv := range f.completionConfig(cmd).Inventories {
		if strings.HasPrefix(inv.Name, toComplete) {
			out = append(out, inv.Name)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// completePorts completes --port: the serial ports there are (USB ones
// with their vendor and product ids), then the named devices.
func (f *Factory) completePorts(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	var out []string
	// f.listPorts (serial.ListPorts, which tests replace): the list of
	// `otactl ports` and --port auto; it opens no port (a Tab must not
	// pulse DTR and RTS on a board).
	if ports, err := f.listPorts(); err == nil {
		usb := 0
		for _, p := range ports {
			if p.USB {
				usb++
			}
			if !strings.HasPrefix(p.Name, toComplete) {
				continue
			}
			desc := "serial port"
			if p.USB {
				desc = "USB serial"
				if id := usbID(p); id != "" {
					desc += " " + strings.ToLower(id)
				}
				if p.Product != "" {
					desc += " " + p.Product
				}
				if p.SerialNumber != "" {
					desc += " #" + p.SerialNumber
				}
			}
			out = append(out, p.Name+"\t"+desc)
		}
		if usb == 1 && strings.HasPrefix(AutoPort, toComplete) {
			out = append(out, AutoPort+"\tthe only USB serial port")
		}
	}
	out = append(out, f.deviceNameCompletions(cmd, toComplete)...)
	return out, cobra.ShellCompDirectiveNoFileComp
}

// completionConfig is the config file for a completion, read with the
// --config and OTACTL_CONFIG given so far; an unreadable one completes
// nothing (a shell has nowhere to show the error).
func (f *Factory) completionConfig(cmd *cobra.Command) *Config {
	if f.cfg != nil {
		return f.cfg
	}
	path := f.G.Config
	if path == "" && f.Getenv != nil {
		path = f.Getenv("OTACTL_CONFIG")
		if path == "" {
			path = f.Getenv("MOS_CONFIG")
		}
	}
	cfg, err := loadConfig(path, f.Getenv)
	if err != nil {
		return &Config{}
	}
	f.cfg = cfg
	return cfg
}

// completeMethods completes `otactl call METHOD` with the methods the
// device lists (RPC.List), when it answers within completeMethodsTimeout;
// nothing otherwise.
func (f *Factory) completeMethods(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	// The flags are parsed, but the environment and the named device are
	// not applied yet: prepare does both (its notes go to stderr, which
	// the shell does not show).
	// Cobra parses the command line twice to complete it: each flag
	// counts as given more than once.
	f.portGiven, f.deviceGiven = min(f.portGiven, 1), min(f.deviceGiven, 1)
	if err := f.prepare(cmd); err != nil || f.G.Port == "" {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	parent := cmd.Context()
	if parent == nil {
		parent = context.Background()
	}
	ctx, cancel := context.WithTimeout(parent, completeMethodsTimeout)
	defer cancel()
	c, err := f.Connect(ctx)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	defer c.Close()
	raw, err := c.Call(ctx, wire.RPCList, nil)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var methods []string
	if json.Unmarshal(raw, &methods) != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []string
	for _, m := range methods {
		if strings.HasPrefix(m, toComplete) {
			out = append(out, m)
		}
	}
	sort.Strings(out)
	return out, cobra.ShellCompDirectiveNoFileComp
}
