package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/otactl/otactl/pkg/transport"
)

// NewCmdDevices builds `otactl devices`: the named devices and inventories
// of the config file.
func NewCmdDevices(f *Factory) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "devices",
		Short: "List the devices and inventories named in the config file",
		Long: `List the devices named in the config file ($XDG_CONFIG_HOME/otactl/config.yaml,
~/.config/otactl/config.yaml by default; --config or OTACTL_CONFIG for another):
each name with its port and the settings it brings (credentials files,
certificates), and the inventories 'otactl fleet --inventory NAME' takes.
Use a device with --device NAME (or OTACTL_DEVICE=NAME); a flag or an
environment variable overrides what the file says. Nothing is contacted.`,
		Example: `  otactl devices
  otactl devices --json | jq -r '.devices[].name'
  otactl --device bench bootstate`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := f.config()
			if err != nil {
				return err
			}
			return f.printDevices(cfg)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&f.G.Config, "config", "", "config file of named devices (env OTACTL_CONFIG; default $XDG_CONFIG_HOME/otactl/config.yaml or ~/.config/otactl/config.yaml)")
	annotate(fs.Lookup("config"), annotGlobal)
	return cmd
}

// deviceDoc is one device of `otactl devices --json`.
type deviceDoc struct {
	Name          string `json:"name"`
	Port          string `json:"port"`
	Description   string `json:"description,omitempty"`
	RPCCredsFile  string `json:"rpc_creds_file,omitempty"`
	BrokerCreds   string `json:"broker_creds_file,omitempty"`
	CACertFile    string `json:"ca_cert_file,omitempty"`
	CertFile      string `json:"cert_file,omitempty"`
	KeyFile       string `json:"key_file,omitempty"`
	TLSServerName string `json:"tls_server_name,omitempty"`
	Insecure      *bool  `json:"insecure,omitempty"`
	Timeout       *int64 `json:"timeout_seconds,omitempty"`
	BaudRate      *int   `json:"baud_rate,omitempty"`
	HWFlow        *bool  `json:"hw_flow_control,omitempty"`
	Source        string `json:"source"`
}

// inventoryDoc is one inventory of `otactl devices --json`.
type inventoryDoc struct {
	Name        string   `json:"name"`
	Devices     []string `json:"devices,omitempty"`
	File        string   `json:"file,omitempty"`
	Broker      string   `json:"broker,omitempty"`
	BrokerCreds string   `json:"broker_creds_file,omitempty"`
	IDs         string   `json:"ids,omitempty"`
	Source      string   `json:"source"`
}

func (f *Factory) printDevices(cfg *Config) error {
	path := cfg.Path
	if path == "" {
		path = defaultConfigPath(f.Getenv)
	}
	if f.G.JSON {
		doc := struct {
			Config      string         `json:"config"`
			Exists      bool           `json:"exists"`
			Devices     []deviceDoc    `json:"devices"`
			Inventories []inventoryDoc `json:"inventories"`
		}{Config: path, Exists: cfg.Path != "", Devices: []deviceDoc{}, Inventories: []inventoryDoc{}}
		for _, d := range cfg.Devices {
			dd := deviceDoc{Name: d.Name, Port: transport.RedactString(d.Port), Description: d.Description,
				RPCCredsFile: d.RPCCreds, BrokerCreds: d.BrokerCreds, CACertFile: d.CACertFile, CertFile: d.CertFile,
				KeyFile: d.KeyFile, TLSServerName: d.TLSServerName, Insecure: d.Insecure, BaudRate: d.BaudRate,
				HWFlow: d.HWFlow, Source: d.Source()}
			if d.Timeout != nil {
				s := int64(d.Timeout.Seconds())
				dd.Timeout = &s
			}
			doc.Devices = append(doc.Devices, dd)
		}
		for _, inv := range cfg.Inventories {
			id := inventoryDoc{Name: inv.Name, File: inv.File, Broker: transport.RedactString(inv.Broker),
				BrokerCreds: inv.BrokerCreds, IDs: inv.IDs, Source: inv.Source()}
			for _, e := range inv.Entries {
				id.Devices = append(id.Devices, transport.RedactString(e.Value))
			}
			doc.Inventories = append(doc.Inventories, id)
		}
		return writeJSON(f.IO.Out, doc)
	}
	if cfg.Path == "" {
		f.note("no config file at %s: name your devices there (docs/commands.md, \"Named devices\")", path)
		return nil
	}
	if len(cfg.Devices) == 0 && len(cfg.Inventories) == 0 {
		f.note("%s names no device and no inventory", path)
		return nil
	}
	if len(cfg.Devices) > 0 {
		tw := tabwriter.NewWriter(f.IO.Out, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tPORT\tSETTINGS\tDESCRIPTION")
		for _, d := range cfg.Devices {
			settings := strings.Join(d.settings(), ",")
			if settings == "" {
				settings = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", d.Name, transport.RedactString(d.Port), settings, d.Description)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if len(cfg.Inventories) > 0 {
		if len(cfg.Devices) > 0 {
			f.out("")
		}
		tw := tabwriter.NewWriter(f.IO.Out, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "INVENTORY\tDEVICES")
		for _, inv := range cfg.Inventories {
			var what string
			switch {
			case inv.File != "":
				what = "file " + inv.File
			case inv.Broker != "":
				what = fmt.Sprintf("ids %s at %s", inv.IDs, transport.RedactString(inv.Broker))
			default:
				var vals []string
				for _, e := range inv.Entries {
					vals = append(vals, transport.RedactString(e.Value))
				}
				what = strings.Join(vals, ", ")
			}
			fmt.Fprintf(tw, "%s\t%s\n", inv.Name, what)
		}
		return tw.Flush()
	}
	return nil
}
