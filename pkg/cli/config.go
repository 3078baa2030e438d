package cli

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/transport"
)

// The config file (docs/commands.md, "Named devices"): named devices, each
// a port and the settings that go with it, and named inventories for
// `otactl fleet`. It never holds a secret: credentials stay in files it
// names.
//
//	devices:
//	  bench:
//	    port: /dev/ttyUSB0
//	    description: ESP32 on my desk
//	  lab:
//	    port: https://10.0.0.7/rpc
//	    rpc-creds: lab.creds          # a file holding user:pass
//	    ca-cert-file: lab-ca.pem
//	inventories:
//	  office: [bench, lab, http://10.0.0.8/rpc]
//	  plant:
//	    file: plant-devices.txt
//	  broker:
//	    broker: mqtts://broker.example.com:8883
//	    broker-creds: broker.creds
//	    ids: plant-ids.txt

// configFileName is the file otactl reads in its config directory.
const configFileName = "config.yaml"

// Config is a parsed config file.
type Config struct {
	// Path is the file read ("" when there is none).
	Path string
	// Devices and Inventories in the order of the file.
	Devices     []*DeviceProfile
	Inventories []*InventoryDef
}

// DeviceProfile is one named device: every field set in the file, paths
// made absolute (relative ones are relative to the config file).
type DeviceProfile struct {
	Name, Description string
	// Port as given (no credentials: the file refuses them); BrokerCreds
	// names a file holding user:pass for an MQTT broker's URL.
	Port, BrokerCreds string
	// RPCCreds names a file holding user:pass (never the pair itself).
	RPCCreds               string
	CACertFile, CertFile   string
	KeyFile, TLSServerName string
	Insecure, HWFlow       *bool
	Timeout                *time.Duration
	BaudRate               *int
	line                   int
	path                   string
	lines                  map[string]int // key → line, for errors
}

// InventoryDef is one named inventory: a list of device names and
// addresses, an inventory file, or a broker and a file of device ids.
type InventoryDef struct {
	Name    string
	Entries []InventoryEntry
	File    string
	Broker  string
	// BrokerCreds names a file holding user:pass for Broker.
	BrokerCreds string
	IDs         string
	line        int
	path        string
}

// InventoryEntry is a device of a list inventory: a configured device's
// name or an address, with its line in the file.
type InventoryEntry struct {
	Value string
	Line  int
}

// ConfigError is a config file that cannot be used; it names the file and
// line. The CLI makes it a usage error (exit 2).
type ConfigError struct {
	Path string
	Line int
	Msg  string
}

func (e *ConfigError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("config file %s, line %d: %s", e.Path, e.Line, e.Msg)
	}
	return fmt.Sprintf("config file %s: %s", e.Path, e.Msg)
}

// Source says where a device or inventory was defined ("PATH:LINE").
func (p *DeviceProfile) Source() string { return fmt.Sprintf("%s:%d", p.path, p.line) }

// Source says where an inventory was defined ("PATH:LINE").
func (d *InventoryDef) Source() string { return fmt.Sprintf("%s:%d", d.path, d.line) }

// Device returns the device named name, or nil.
func (c *Config) Device(name string) *DeviceProfile {
	if c == nil {
		return nil
	}
	for _, d := range c.Devices {
		if d.Name == name {
			return d
		}
	}
	return nil
}

// Inventory returns the inventory named name, or nil.
func (c *Config) Inventory(name string) *InventoryDef {
	if c == nil {
		return nil
	}
	for _, d := range c.Inventories {
		if d.Name == name {
			return d
		}
	}
	return nil
}

// DeviceNames lists the device names, in the order of the file.
func (c *Config) DeviceNames() []string {
	if c == nil {
		return nil
	}
	names := make([]string, len(c.Devices))
	for i, d := range c.Devices {
		names[i] = d.Name
	}
	return names
}

// defaultConfigPath is $XDG_CONFIG_HOME/otactl/config.yaml, else
// ~/.config/otactl/config.yaml (%AppData%\otactl\config.yaml on Windows).
func defaultConfigPath(getenv func(string) string) string {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	if d := getenv("XDG_CONFIG_HOME"); filepath.IsAbs(d) {
		return filepath.Join(d, "otactl", configFileName)
	}
	if runtime.GOOS == "windows" {
		if d := getenv("AppData"); d != "" {
			return filepath.Join(d, "otactl", configFileName)
		}
	}
	home := getenv("HOME")
	if home == "" {
		if h, err := os.UserHomeDir(); err == nil {
			home = h
		}
	}
	if home == "" {
		return ""
	}
	return filepath.Join(home, ".config", "otactl", configFileName)
}

// loadConfig reads the config file: path when given (--config,
// OTACTL_CONFIG: it must exist), else the default one, which may be
// missing (an empty Config, Path ""). A file that cannot be parsed, a key
// otactl does not know or an inline secret is a *ConfigError.
func loadConfig(path string, getenv func(string) string) (*Config, error) {
	explicit := path != ""
	if !explicit {
		path = defaultConfigPath(getenv)
		if path == "" {
			return &Config{}, nil
		}
	}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist) && !explicit:
		return &Config{}, nil
	case errors.Is(err, os.ErrNotExist):
		return nil, usageErrorf("config file %s does not exist (--config or OTACTL_CONFIG)", path)
	case err != nil:
		return nil, fmt.Errorf("cannot read config file %s: %w", path, err)
	}
	cfg, err := parseConfig(b, path, getenv)
	if err != nil {
		return nil, &UsageError{Err: err}
	}
	return cfg, nil
}

// deviceKeys are the keys a device may set; inventoryKeys an inventory's.
var deviceKeys = []string{"port", "description", "rpc-creds", "broker-creds", "ca-cert-file", "cert-file", "key-file",
	"tls-server-name", "insecure", "timeout", "baud-rate", "hw-flow-control"}

var inventoryKeys = []string{"devices", "file", "broker", "broker-creds", "ids"}

// nameRE is what a device or inventory name may be: nothing a port or a
// path could be mistaken for.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// parseConfig parses a config file's text.
func parseConfig(b []byte, path string, getenv func(string) string) (*Config, error) {
	p := &configParser{path: path, dir: filepath.Dir(path), getenv: getenv}
	cfg := &Config{Path: path}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, &ConfigError{Path: path, Msg: "not valid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	if len(bytes.TrimSpace(b)) == 0 || len(doc.Content) == 0 {
		return cfg, nil
	}
	root := doc.Content[0]
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return cfg, nil
	}
	if root.Kind != yaml.MappingNode {
		return nil, p.errf(root, "want a mapping with devices: and inventories:")
	}
	err := p.mapping(root, []string{"devices", "inventories"}, func(key string, k, v *yaml.Node) error {
		if v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
			return nil
		}
		if v.Kind != yaml.MappingNode {
			return p.errf(v, "%s: want a mapping of names", key)
		}
		return p.mapping(v, nil, func(name string, k, v *yaml.Node) error {
			if !nameRE.MatchString(name) {
				return p.errf(k, "%q is not a valid name: use letters, digits, '.', '_' and '-' (at most 64)", name)
			}
			if key == "devices" {
				d, err := p.device(name, k, v)
				if err == nil {
					cfg.Devices = append(cfg.Devices, d)
				}
				return err
			}
			inv, err := p.inventory(name, k, v)
			if err == nil {
				cfg.Inventories = append(cfg.Inventories, inv)
			}
			return err
		})
	})
	if err != nil {
		return nil, err
	}
	return cfg, nil
}

type configParser struct {
	path, dir string
	getenv    func(string) string
}

func (p *configParser) errf(n *yaml.Node, format string, args ...any) error {
	return &ConfigError{Path: p.path, Line: n.Line, Msg: fmt.Sprintf(format, args...)}
}

// mapping walks the keys of a mapping node in order; known, when not nil,
// lists the keys allowed. A key twice is an error.
func (p *configParser) mapping(n *yaml.Node, known []string, fn func(key string, k, v *yaml.Node) error) error {
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return p.errf(k, "want a plain key")
		}
		if line, dup := seen[k.Value]; dup {
			return p.errf(k, "%q given twice (first on line %d)", k.Value, line)
		}
		seen[k.Value] = k.Line
		if known != nil && !contains(known, k.Value) {
			return p.errf(k, "unknown key %q (known here: %s)", k.Value, strings.Join(known, ", "))
		}
		if err := fn(k.Value, k, v); err != nil {
			return err
		}
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// scalar returns a scalar value, refusing lists, mappings and nulls.
func (p *configParser) scalar(key string, v *yaml.Node) (string, error) {
	if v.Kind != yaml.ScalarNode || v.Tag == "!!null" || strings.TrimSpace(v.Value) == "" {
		return "", p.errf(v, "%s wants a value", key)
	}
	return strings.TrimSpace(v.Value), nil
}

// file makes a path from the file absolute: ~/ is the home directory, a
// relative path is relative to the config file's directory.
func (p *configParser) file(s string) string {
	if rest, ok := strings.CutPrefix(s, "~/"); ok {
		home := ""
		if p.getenv != nil {
			home = p.getenv("HOME")
		}
		if home == "" {
			home, _ = os.UserHomeDir()
		}
		return filepath.Join(home, rest)
	}
	if !filepath.IsAbs(s) {
		return filepath.Join(p.dir, s)
	}
	return s
}

// credsFile reads a key that names a file of credentials. A value that
// looks like user:password is refused without being printed.
func (p *configParser) credsFile(key string, v *yaml.Node) (string, error) {
	s, err := p.scalar(key, v)
	if err != nil {
		return "", err
	}
	s = strings.TrimPrefix(s, "@")
	if strings.Contains(s, ":") && !windowsDrive(s) {
		return "", p.errf(v, "%s must name a file that holds user:pass, not the credentials themselves: the config file never holds a password; "+
			"put user:pass on the first line of a file only you can read (chmod 600) and give its path", key)
	}
	return p.file(s), nil
}

// windowsDrive reports whether s starts with a drive letter (C:\, C:/).
func windowsDrive(s string) bool {
	return len(s) >= 3 && (s[0] >= 'A' && s[0] <= 'Z' || s[0] >= 'a' && s[0] <= 'z') && s[1] == ':' && (s[2] == '\\' || s[2] == '/')
}

// noSecret refuses a URL that carries credentials.
func (p *configParser) noSecret(key string, v *yaml.Node, s string) error {
	u, err := transport.ParsePort(s)
	if err != nil {
		return p.errf(v, "%s: %v", key, strings.TrimPrefix(err.Error(), transport.ErrBadPort.Error()+": "))
	}
	if u.User != nil {
		return p.errf(v, "%s %s holds credentials: the config file never holds a password or token; for an MQTT broker, put user:pass in a file and name it with broker-creds", key, transport.Redact(u))
	}
	return nil
}

func (p *configParser) device(name string, k, v *yaml.Node) (*DeviceProfile, error) {
	d := &DeviceProfile{Name: name, line: k.Line, path: p.path, lines: map[string]int{}}
	if v.Kind != yaml.MappingNode {
		return nil, p.errf(v, "device %s: want a mapping of settings (port: …)", name)
	}
	err := p.mapping(v, deviceKeys, func(key string, k, v *yaml.Node) error {
		d.lines[key] = k.Line
		var err error
		var s string
		switch key {
		case "rpc-creds":
			d.RPCCreds, err = p.credsFile(key, v)
			return err
		case "broker-creds":
			d.BrokerCreds, err = p.credsFile(key, v)
			return err
		}
		if s, err = p.scalar(key, v); err != nil {
			return err
		}
		switch key {
		case "port":
			d.Port = s
			return p.noSecret(key, v, s)
		case "description":
			d.Description = s
		case "ca-cert-file":
			d.CACertFile = p.file(s)
		case "cert-file":
			d.CertFile = p.file(s)
		case "key-file":
			d.KeyFile = p.file(s)
		case "tls-server-name":
			d.TLSServerName = s
		case "insecure", "hw-flow-control":
			b, err := strconv.ParseBool(s)
			if err != nil {
				return p.errf(v, "%s wants true or false, not %q", key, s)
			}
			if key == "insecure" {
				d.Insecure = &b
			} else {
				d.HWFlow = &b
			}
		case "timeout":
			t, err := parseSeconds(s)
			if err == nil && t <= 0 {
				err = errors.New("must be positive")
			}
			if err == nil && t > ota.MaxTimeout {
				err = errTooLong
			}
			if err != nil {
				return p.errf(v, "timeout %q: %v", s, err)
			}
			d.Timeout = &t
		case "baud-rate":
			n, err := strconv.Atoi(s)
			if err != nil || n <= 0 {
				return p.errf(v, "baud-rate wants a positive number, not %q", s)
			}
			d.BaudRate = &n
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if d.Port == "" {
		return nil, p.errf(k, "device %s has no port", name)
	}
	if d.BrokerCreds != "" {
		if u, _ := transport.ParsePort(d.Port); u == nil || (u.Scheme != "mqtt" && u.Scheme != "mqtts") {
			return nil, &ConfigError{Path: p.path, Line: d.lines["broker-creds"], Msg: "broker-creds goes with an mqtt:// or mqtts:// port"}
		}
	}
	return d, nil
}

func (p *configParser) inventory(name string, k, v *yaml.Node) (*InventoryDef, error) {
	inv := &InventoryDef{Name: name, line: k.Line, path: p.path}
	list := func(v *yaml.Node) error {
		if v.Kind != yaml.SequenceNode {
			return p.errf(v, "inventory %s: want a list of device names and addresses", name)
		}
		for _, e := range v.Content {
			s, err := p.scalar("a device of inventory "+name, e)
			if err != nil {
				return err
			}
			if strings.Contains(s, "://") {
				if err := p.noSecret("inventory "+name+": device", e, s); err != nil {
					return err
				}
			}
			inv.Entries = append(inv.Entries, InventoryEntry{Value: s, Line: e.Line})
		}
		if len(inv.Entries) == 0 {
			return p.errf(v, "inventory %s lists no devices", name)
		}
		return nil
	}
	if v.Kind == yaml.SequenceNode {
		return inv, list(v)
	}
	if v.Kind != yaml.MappingNode {
		return nil, p.errf(v, "inventory %s: want a list of devices, or a mapping with devices:, file:, or broker: and ids:", name)
	}
	err := p.mapping(v, inventoryKeys, func(key string, k, v *yaml.Node) error {
		if key == "devices" {
			return list(v)
		}
		if key == "broker-creds" {
			var err error
			inv.BrokerCreds, err = p.credsFile(key, v)
			return err
		}
		s, err := p.scalar(key, v)
		if err != nil {
			return err
		}
		switch key {
		case "file":
			inv.File = p.file(s)
		case "ids":
			inv.IDs = p.file(s)
		case "broker":
			inv.Broker = s
			return p.noSecret(key, v, s)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	n := 0
	for _, set := range []bool{len(inv.Entries) > 0, inv.File != "", inv.Broker != "" || inv.IDs != ""} {
		if set {
			n++
		}
	}
	switch {
	case n != 1:
		return nil, p.errf(k, "inventory %s: give exactly one of devices:, file:, or broker: with ids:", name)
	case (inv.Broker == "") != (inv.IDs == ""):
		return nil, p.errf(k, "inventory %s: broker: and ids: go together", name)
	case inv.BrokerCreds != "" && inv.Broker == "":
		return nil, p.errf(k, "inventory %s: broker-creds goes with broker:", name)
	}
	return inv, nil
}

// readCredsFile reads user:pass from the first line of a file named in the
// config file (never printing it).
func readCredsFile(path, key, source string) (user, pass string, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", "", usageErrorf("%s (%s): cannot read %s: %v", key, source, path, errors.Unwrap(err))
	}
	line, _, _ := strings.Cut(string(b), "\n")
	user, pass, ok := strings.Cut(strings.TrimSpace(line), ":")
	if !ok || user == "" {
		return "", "", usageErrorf("%s (%s): the first line of %s must be user:pass", key, source, path)
	}
	return user, pass, nil
}

// withBrokerCreds puts user:pass from a creds file into an MQTT URL.
func withBrokerCreds(port, credsFile, source string) (string, error) {
	if credsFile == "" {
		return port, nil
	}
	u, err := transport.ParsePort(port)
	if err != nil {
		return "", &UsageError{Err: err}
	}
	user, pass, err := readCredsFile(credsFile, "broker-creds", source)
	if err != nil {
		return "", err
	}
	u.User = url.UserPassword(user, pass)
	return u.String(), nil
}

// apply sets in g every setting of the device that was not given on the
// command line or in the environment (explicit, by flag name): flag >
// environment > config file.
func (p *DeviceProfile) apply(g *Globals, explicit map[string]bool) error {
	if !explicit["port"] {
		port, err := p.port()
		if err != nil {
			return err
		}
		g.Port = port
	}
	p.applySettings(g, explicit)
	return nil
}

// port is the device's port, with the broker credentials of broker-creds.
func (p *DeviceProfile) port() (string, error) {
	return withBrokerCreds(p.Port, p.BrokerCreds, p.Source())
}

// applySettings is apply without the port.
func (p *DeviceProfile) applySettings(g *Globals, explicit map[string]bool) {
	set := func(name string) bool { return !explicit[name] }
	if p.RPCCreds != "" && set("rpc-creds") {
		g.RPCCreds = "@" + p.RPCCreds
	}
	for _, s := range []struct {
		name string
		dst  *string
		v    string
	}{
		{"ca-cert-file", &g.CACertFile, p.CACertFile}, {"cert-file", &g.CertFile, p.CertFile},
		{"key-file", &g.KeyFile, p.KeyFile}, {"tls-server-name", &g.TLSServerName, p.TLSServerName},
	} {
		if s.v != "" && set(s.name) {
			*s.dst = s.v
		}
	}
	if p.Insecure != nil && set("insecure") {
		g.Insecure = *p.Insecure
	}
	if p.HWFlow != nil && set("hw-flow-control") {
		g.HWFlow = *p.HWFlow
	}
	if p.Timeout != nil && set("timeout") {
		g.Timeout = *p.Timeout
	}
	if p.BaudRate != nil && set("baud-rate") {
		g.BaudRate = *p.BaudRate
	}
}

// settings lists the keys the device sets, for `otactl devices`.
func (p *DeviceProfile) settings() []string {
	var keys []string
	for _, k := range deviceKeys {
		if _, ok := p.lines[k]; ok && k != "port" && k != "description" {
			keys = append(keys, k)
		}
	}
	return keys
}
