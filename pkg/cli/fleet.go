package cli

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/otactl/otactl/pkg/fleet"
	"github.com/otactl/otactl/pkg/transport"
)

// NewCmdFleet builds `otactl fleet` and its subcommands (docs/fleet.md).
func NewCmdFleet(f *Factory) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "fleet",
		Short: "Update many devices in one rollout, or read their boot states",
		// The devices come from its own flags (docs/fleet.md).
		Annotations: map[string]string{annotOwnDevices: "true"},
		Long: `Commands over many devices at once. The devices come from an inventory
(--devices FILE: one address per line, as --port takes it), from --device
PORT (repeatable; a device named in the config file too, with its
settings), from --inventory NAME (an inventory of the config file), or from
--broker mqtt://host:port --ids FILE (one device id per line, all behind
one broker). See docs/fleet.md and, for the config file, docs/commands.md.`,
		Example: `  # Rehearse on 100 emulated devices behind an embedded broker
  otactl emulator --count 100 --state-dir "$(mktemp -d)" --mqtt-broker embedded:127.0.0.1:1883 --inventory-file devices.txt &
  while [ ! -s devices.txt ]; do sleep 0.2; done   # written once all are reachable
  otactl fleet update --file fw.zip --devices devices.txt --commit --parallel 20 --max-failures 5%
  otactl fleet bootstate --devices devices.txt`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return usageErrorf("fleet needs a subcommand: update or bootstate")
		},
	}
	cmd.AddCommand(newCmdFleetUpdate(f), newCmdFleetBootState(f))
	return cmd
}

// fleetDevices are the flags that select the devices of a fleet command.
type fleetDevices struct {
	File      string
	Devices   []string
	Broker    string
	IDs       string
	Inventory string
}

func (d *fleetDevices) add(fl *pflag.FlagSet) {
	fl.StringVar(&d.File, "devices", "", "inventory file: one device address per line (mqtt://broker/ID, http://host/rpc, a serial path …); '#' starts a comment")
	fl.StringArrayVar(&d.Devices, "device", nil, "a device address (repeatable), as --port takes it, or the name of a device of the config file (with its settings)")
	fl.StringVar(&d.Inventory, "inventory", "", "the devices of an inventory named in the config file ('otactl devices' lists them)")
	fl.StringVar(&d.Broker, "broker", "", "with --ids: the MQTT broker of the devices, mqtt[s]://[user:pass@]host[:port]")
	fl.StringVar(&d.IDs, "ids", "", "with --broker: file of device ids, one per line")
}

// targets reads and checks every device address before anything is sent:
// a bad line or a device listed twice is a usage error naming it.
func (d *fleetDevices) targets(f *Factory, cmd *cobra.Command) ([]fleet.Target, error) {
	if cmd.Flags().Changed("port") {
		return nil, usageErrorf("fleet commands take their devices from --devices FILE, --device PORT or --broker URL --ids FILE, not --port")
	}
	n := 0
	for _, set := range []bool{d.File != "", len(d.Devices) > 0, d.Broker != "" || d.IDs != "", d.Inventory != ""} {
		if set {
			n++
		}
	}
	if n != 1 {
		return nil, usageErrorf("give the devices with exactly one of --devices FILE, --device PORT|NAME (repeatable), --inventory NAME, or --broker URL --ids FILE")
	}
	inv := fleet.NewInventory(fleet.CheckAddress(f.Registry))
	var err error
	switch {
	case d.File != "":
		err = readInventory(d.File, "--devices", func(fh *os.File) error { return inv.AddFile(fh, d.File) })
	case len(d.Devices) > 0:
		for i, p := range d.Devices {
			if err = f.addFleetDevice(inv, p, fmt.Sprintf("--device #%d", i+1)); err != nil {
				break
			}
		}
	case d.Inventory != "":
		err = f.addConfigInventory(inv, d.Inventory)
	default:
		if d.Broker == "" || d.IDs == "" {
			return nil, usageErrorf("--broker and --ids go together: --broker mqtt://host:port --ids FILE")
		}
		var b *url.URL
		b, err = transport.ParsePort(d.Broker)
		if err == nil && b.Scheme != "mqtt" && b.Scheme != "mqtts" {
			err = fmt.Errorf("%w: --broker %s: want mqtt://host[:port] or mqtts://host[:port]", transport.ErrBadPort, transport.Redact(b))
		}
		if err == nil && strings.Trim(b.Path, "/") != "" {
			err = fmt.Errorf("%w: --broker %s: give the broker without a device id (the ids come from --ids)", transport.ErrBadPort, transport.Redact(b))
		}
		if err != nil {
			return nil, &UsageError{Err: err}
		}
		err = readInventory(d.IDs, "--ids", func(fh *os.File) error { return inv.AddIDs(b, fh, d.IDs) })
	}
	var ie *fleet.InventoryError
	if errors.As(err, &ie) {
		return nil, &UsageError{Err: err}
	}
	if err != nil {
		return nil, err
	}
	if len(inv.Targets) == 0 {
		return nil, usageErrorf("no devices: the inventory lists none")
	}
	inv.Name()
	return inv.Targets, nil
}

func readInventory(path, flag string, fn func(*os.File) error) error {
	fh, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return usageErrorf("%s %s does not exist", flag, path)
	}
	if err != nil {
		return fmt.Errorf("cannot read %s %s: %w", flag, path, err)
	}
	defer fh.Close()
	return fn(fh)
}

// addFleetDevice adds a --device value or an entry of a config inventory:
// the name of a device of the config file (its port, and its settings for
// this device alone), else an address.
func (f *Factory) addFleetDevice(inv *fleet.Inventory, v, source string) error {
	if nameRE.MatchString(v) {
		cfg, err := f.config()
		if err != nil {
			return err
		}
		if p := cfg.Device(v); p != nil {
			port, err := p.port()
			if err != nil {
				return err
			}
			if err := inv.Add(port, source+" (device "+v+")"); err != nil {
				return err
			}
			inv.Targets[len(inv.Targets)-1].Device = v
			return nil
		}
	}
	return inv.Add(v, source)
}

// addConfigInventory adds the devices of the config file's inventory name.
func (f *Factory) addConfigInventory(inv *fleet.Inventory, name string) error {
	cfg, err := f.config()
	if err != nil {
		return err
	}
	def := cfg.Inventory(name)
	if def == nil {
		where := cfg.Path
		if where == "" {
			return usageErrorf("--inventory %s: no config file (looked for %s): name your inventories there (docs/commands.md, \"Named devices\")", name, defaultConfigPath(f.Getenv))
		}
		var names []string
		for _, i := range cfg.Inventories {
			names = append(names, i.Name)
		}
		known := "it names no inventory"
		if len(names) > 0 {
			known = "it names " + strings.Join(names, ", ")
		}
		return usageErrorf("--inventory %s: no such inventory in %s (%s)", name, where, known)
	}
	switch {
	case def.File != "":
		return readInventory(def.File, "inventory "+name+" ("+def.Source()+"): file", func(fh *os.File) error { return inv.AddFile(fh, def.File) })
	case def.Broker != "":
		port, err := withBrokerCreds(def.Broker, def.BrokerCreds, def.Source())
		if err != nil {
			return err
		}
		b, err := transport.ParsePort(port)
		if err == nil && b.Scheme != "mqtt" && b.Scheme != "mqtts" {
			err = fmt.Errorf("%w: inventory %s (%s): broker %s: want mqtt://host[:port] or mqtts://host[:port]", transport.ErrBadPort, name, def.Source(), transport.Redact(b))
		}
		if err != nil {
			return &UsageError{Err: err}
		}
		return readInventory(def.IDs, "inventory "+name+" ("+def.Source()+"): ids", func(fh *os.File) error { return inv.AddIDs(b, fh, def.IDs) })
	}
	for _, e := range def.Entries {
		if err := f.addFleetDevice(inv, e.Value, fmt.Sprintf("%s:%d", cfg.Path, e.Line)); err != nil {
			return err
		}
	}
	return nil
}
