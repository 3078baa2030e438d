package fleet

import (
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/all"
)

func TestInventoryFile(t *testing.T) {
	inv := NewInventory(CheckAddress(all.NewRegistry()))
	err := inv.AddFile(strings.NewReader("\ufeff# fleet A\nmqtt://u:secret@127.0.0.1:1883/dev-0001\n\n  mqtt://u:secret@127.0.0.1:1883/dev-0002  \n# end\n"), "devices.txt")
	if err != nil {
		t.Fatal(err)
	}
	inv.Name()
	if len(inv.Targets) != 2 || inv.Targets[1].Name != "dev-0002" || inv.Targets[1].Source != "devices.txt:4" {
		t.Fatalf("%+v", inv.Targets)
	}
	if strings.Contains(inv.Targets[0].Address, "secret") || !strings.Contains(inv.Targets[0].Addr, "secret") {
		t.Errorf("address %q / addr %q", inv.Targets[0].Address, inv.Targets[0].Addr)
	}
}

func TestInventoryErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"mqtt://b/d1\nMQTT://B/d1/\n", "devices.txt:2: mqtt://B/d1/ is listed twice (first at devices.txt:1)"},
		{"mqtt://u:pw@b/d1\nmqtt://b/d1\n", "listed twice"},
		{"http://h/rpc\nfoo://h/x\n", "devices.txt:2: bad port: unknown scheme \"foo\""},
		{"mqtt://b:1883\n", "devices.txt:1: bad port: mqtt://b:1883 names no device id"},
		{"mqtt://b/dev+1\n", "devices.txt:1: bad port: device id \"dev+1\""},
		{"http:///rpc\n", "names no host"},
		{"/dev/ttyUSB0\n/dev/../dev/ttyUSB0\n", "devices.txt:2"},
		{"mqtt://u:hunter2@b/d1 x\n://x\n", "devices.txt:2"},
		{strings.Repeat("x", 70000), "devices.txt:1: line longer"},
	} {
		inv := NewInventory(CheckAddress(all.NewRegistry()))
		err := inv.AddFile(strings.NewReader(tc.in), "devices.txt")
		var ie *InventoryError
		if !errors.As(err, &ie) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.in, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%q: error shows the password: %v", tc.in, err)
		}
		if strings.Contains(tc.want, "bad port") && !errors.Is(err, transport.ErrBadPort) {
			t.Errorf("%q: %v is not ErrBadPort", tc.in, err)
		}
	}
}

func TestInventoryIDs(t *testing.T) {
	b, _ := url.Parse("mqtt://u:pw@127.0.0.1:1883")
	inv := NewInventory(CheckAddress(all.NewRegistry()))
	if err := inv.AddIDs(b, strings.NewReader("dev-1\n#x\ndev-2\n"), "ids.txt"); err != nil {
		t.Fatal(err)
	}
	inv.Name()
	if len(inv.Targets) != 2 || inv.Targets[1].Addr != "mqtt://u:pw@127.0.0.1:1883/dev-2" || inv.Targets[1].Name != "dev-2" {
		t.Fatalf("%+v", inv.Targets)
	}
	for in, want := range map[string]string{"a/b\n": "ids.txt:1", "x\nx\n": "ids.txt:2: ", "a b\n": "not a device id"} {
		inv := NewInventory(CheckAddress(all.NewRegistry()))
		if err := inv.AddIDs(b, strings.NewReader(in), "ids.txt"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v", in, err)
		}
	}
}

func TestInventoryNames(t *testing.T) {
	inv := NewInventory(CheckAddress(all.NewRegistry()))
	for _, a := range []string{"http://127.0.0.1:8080/dev-0001/rpc", "http://127.0.0.1:8080/dev-0002/rpc"} {
		if err := inv.Add(a, "--device"); err != nil {
			t.Fatal(err)
		}
	}
	inv.Name()
	if inv.Targets[0].Name != "dev-0001" {
		t.Errorf("name %q", inv.Targets[0].Name)
	}
	inv = NewInventory(CheckAddress(all.NewRegistry()))
	inv.Add("http://10.0.0.1/rpc", "--device")
	inv.Add("mqtt://b/dev-1", "--device")
	inv.Name()
	if inv.Targets[0].Name != "http://10.0.0.1/rpc" || inv.Targets[1].Name != "mqtt://b/dev-1" {
		t.Errorf("mixed hosts: %+v", inv.Targets)
	}
}

func TestSize(t *testing.T) {
	for in, want := range map[string][2]int{"5%": {10, 10}, "10": {10, 10}, "0": {0, 1}, "33%": {3, 4}, "100%": {12, 12}} {
		s, err := ParseSize(in)
		if err != nil {
			t.Fatal(err)
		}
		total := 12
		if in == "5%" {
			total = 200
		}
		if s.Floor(total) != want[0] || s.Ceil(total) != want[1] {
			t.Errorf("%s of %d: floor %d ceil %d, want %v", in, total, s.Floor(total), s.Ceil(total), want)
		}
	}
	for _, bad := range []string{"-1", "x", "101%", "%", "NaN%", "1.5"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
