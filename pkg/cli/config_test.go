package cli

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	env := func(k string) string {
		if k == "HOME" {
			return "/home/me"
		}
		return ""
	}
	cfg, err := parseConfig([]byte(`
# my devices
devices:
  bench:
    port: /dev/ttyUSB0
    baud-rate: 9600
    hw-flow-control: true
  lab:
    port: https://10.0.0.7/rpc
    rpc-creds: "@lab.creds"
    ca-cert-file: ~/pki/ca.pem
    cert-file: /etc/me.pem
    key-file: C:\keys\me.key
    insecure: false
    timeout: 1m
  mq:
    port: mqtt://127.0.0.1:1883/dev1
    broker-creds: broker.creds
inventories:
  office: [bench, lab, http://10.0.0.8/rpc]
  plant:
    file: plant.txt
  ids:
    broker: mqtt://127.0.0.1:1883
    ids: ids.txt
`), "/etc/otactl/config.yaml", env)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(cfg.DeviceNames(), ","); got != "bench,lab,mq" {
		t.Fatalf("devices %s", got)
	}
	b, lab := cfg.Device("bench"), cfg.Device("lab")
	if *b.BaudRate != 9600 || !*b.HWFlow || b.Timeout != nil || b.Source() != "/etc/otactl/config.yaml:4" {
		t.Fatalf("bench %+v", b)
	}
	if lab.RPCCreds != filepath.FromSlash("/etc/otactl/lab.creds") || lab.CACertFile != filepath.FromSlash("/home/me/pki/ca.pem") ||
		lab.CertFile != "/etc/me.pem" || *lab.Timeout != time.Minute || *lab.Insecure {
		t.Fatalf("lab %+v", lab)
	}
	if cfg.Device("mq").BrokerCreds != filepath.FromSlash("/etc/otactl/broker.creds") {
		t.Fatalf("mq %+v", cfg.Device("mq"))
	}
	if inv := cfg.Inventory("office"); len(inv.Entries) != 3 || inv.Entries[2].Value != "http://10.0.0.8/rpc" || inv.Entries[0].Line != 20 {
		t.Fatalf("office %+v", inv)
	}
	if inv := cfg.Inventory("plant"); inv.File != filepath.FromSlash("/etc/otactl/plant.txt") {
		t.Fatalf("plant %+v", inv)
	}
	if inv := cfg.Inventory("ids"); inv.Broker != "mqtt://127.0.0.1:1883" || inv.IDs == "" {
		t.Fatalf("ids %+v", inv)
	}

	// Flag > environment > file: only what nobody gave is taken.
	g := Globals{Port: "/dev/other", Timeout: 20 * time.Second, BaudRate: 115200}
	if err := lab.apply(&g, map[string]bool{"port": true, "ca-cert-file": true}); err != nil {
		t.Fatal(err)
	}
	if g.Port != "/dev/other" || g.RPCCreds != "@"+lab.RPCCreds || g.CACertFile != "" || g.CertFile != "/etc/me.pem" || g.Timeout != time.Minute || g.BaudRate != 115200 {
		t.Fatalf("applied %+v", g)
	}
}

func TestParseConfigRefuses(t *testing.T) {
	for _, c := range []struct{ text, want string }{
		{"devices:\n  a:\n    port: /dev/x\n    prot: y\n", `line 4: unknown key "prot"`},
		{"device:\n  a: {}\n", `line 1: unknown key "device" (known here: devices, inventories)`},
		{"devices:\n  a:\n    rpc-creds: admin:hunter2\n    port: /dev/x\n", "line 3: rpc-creds must name a file that holds user:pass"},
		{"devices:\n  a:\n    port: mqtt://u:hunter2@h/dev1\n", "line 3: port mqtt://u:xxxxx@h/dev1 holds credentials"},
		{"devices:\n  a:\n    port: ws://hunter2@h/rpc\n", "holds credentials"},
		{"devices:\n  a:\n    description: no port\n", "line 2: device a has no port"},
		{"devices:\n  a:\n    port: /dev/x\n    timeout: soon\n", `line 4: timeout "soon"`},
		{"devices:\n  a:\n    port: /dev/x\n    timeout: 0\n", "must be positive"},
		{"devices:\n  a:\n    port: /dev/x\n    insecure: yes please\n", "insecure wants true or false"},
		{"devices:\n  a:\n    port: /dev/x\n    baud-rate: -1\n", "baud-rate wants a positive number"},
		{"devices:\n  a:\n    port: [1, 2]\n", "line 3: port wants a value"},
		{"devices:\n  a/b:\n    port: /dev/x\n", `"a/b" is not a valid name`},
		{"devices:\n  a:\n    port: /dev/x\n    broker-creds: b.creds\n", "broker-creds goes with an mqtt:// or mqtts:// port"},
		{"devices:\n  a:\n    port: /dev/x\n  a:\n    port: /dev/y\n", `line 4: "a" given twice (first on line 2)`},
		{"devices: [a, b]\n", "devices: want a mapping of names"},
		{"- a\n", "want a mapping with devices: and inventories:"},
		{"inventories:\n  x:\n    file: a.txt\n    devices: [a]\n", "line 2: inventory x: give exactly one of"},
		{"inventories:\n  x:\n    broker: mqtt://h\n", "broker: and ids: go together"},
		{"inventories:\n  x: []\n", "inventory x lists no devices"},
		{"inventories:\n  x:\n    filename: a\n", `unknown key "filename"`},
		{"inventories:\n  x: [mqtt://u:hunter2@h/d]\n", "holds credentials"},
		{"devices: [unclosed\n", "not valid YAML"},
	} {
		_, err := parseConfig([]byte(c.text), "/c/config.yaml", nil)
		var ce *ConfigError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v; want a ConfigError saying %q", c.text, err, c.want)
			continue
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%q: the error prints the password: %v", c.text, err)
		}
	}
	for _, text := range []string{"", "# nothing\n", "devices:\ninventories:\n", "~\n"} {
		cfg, err := parseConfig([]byte(text), "/c/config.yaml", nil)
		if err != nil || len(cfg.Devices)+len(cfg.Inventories) != 0 {
			t.Errorf("%q: %+v, %v; want an empty config", text, cfg, err)
		}
	}
}

func TestDefaultConfigPath(t *testing.T) {
	env := map[string]string{"HOME": "/home/me"}
	get := func(k string) string { return env[k] }
	if p := defaultConfigPath(get); p != filepath.Join("/home/me", ".config", "otactl", "config.yaml") {
		t.Fatalf("default %s", p)
	}
	env["XDG_CONFIG_HOME"] = "/xdg"
	if p := defaultConfigPath(get); p != filepath.Join("/xdg", "otactl", "config.yaml") {
		t.Fatalf("XDG %s", p)
	}
	env["XDG_CONFIG_HOME"] = "relative" // not absolute: ignored, as the XDG spec says
	if p := defaultConfigPath(get); p != filepath.Join("/home/me", ".config", "otactl", "config.yaml") {
		t.Fatalf("relative XDG %s", p)
	}
}
