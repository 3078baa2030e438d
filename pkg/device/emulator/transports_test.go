package emulator

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/all"
)

// Over every transport: GetBootState → Update from a local HTTP server →
// reboot → {active 1, revert 0, uncommitted} and the new version → Commit;
// and the same without commit, back on slot 0 after the commit timeout.
func TestTransports(t *testing.T) {
	reg := all.NewRegistry()
	for _, tr := range []string{"http", "ws", "serial", "mqtt"} {
		for _, commit := range []bool{true, false} {
			name := tr + "/commit"
			if !commit {
				name = tr + "/timeout"
			}
			t.Run(name, func(t *testing.T) {
				link := filepath.Join(t.TempDir(), "tty")
				e := newEnv(t, func(c *Config) {
					c.Listen = "127.0.0.1:0"
					c.SerialLink = link
					c.MQTTBroker = "embedded:127.0.0.1:0"
					c.RebootAfter = DefaultRebootAfter
					c.RebootDelay = 20 * time.Millisecond
				})
				var port string
				for _, li := range e.d.Listeners() {
					if li.Transport == tr {
						port = li.Addr
					}
				}
				if port == "" {
					t.Fatalf("no %s listener in %v", tr, e.d.Listeners())
				}
				call := func(method string, params any, out any) error {
					t.Helper()
					ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
					defer cancel()
					conn, err := reg.Dial(ctx, port, transport.Options{})
					if err != nil {
						t.Fatalf("dial %s: %v", port, err)
					}
					c := rpc.NewClient(conn, rpc.ClientOptions{})
					defer c.Close()
					res, err := c.Call(ctx, method, params)
					if err == nil && out != nil {
						err = json.Unmarshal(res, out)
					}
					return err
				}
				var bs BootState
				if err := call("OTA.GetBootState", nil, &bs); err != nil || bs != committed0 {
					t.Fatalf("GetBootState: %+v %v", bs, err)
				}
				url := e.serve("/fw.zip", makeBundle(t, fw{version: "2.0.0"}))
				if err := call("OTA.Update", map[string]any{"url": url, "commit_timeout": "300"}, nil); err != nil {
					t.Fatalf("OTA.Update: %v", err)
				}
				e.waitBoots(2)
				if err := call("OTA.GetBootState", nil, &bs); err != nil || bs != uncommit1 {
					t.Fatalf("after update: %+v %v", bs, err)
				}
				var info struct {
					FWVersion string `json:"fw_version"`
				}
				if err := call("Sys.GetInfo", nil, &info); err != nil || info.FWVersion != "2.0.0" {
					t.Fatalf("Sys.GetInfo: %+v %v", info, err)
				}
				if commit {
					if err := call("OTA.Commit", nil, nil); err != nil {
						t.Fatal(err)
					}
					if err := call("OTA.GetBootState", nil, &bs); err != nil || bs != (BootState{ActiveSlot: 1, IsCommitted: true}) {
						t.Fatalf("after commit: %+v %v", bs, err)
					}
					return
				}
				e.clock.Advance(300 * time.Second)
				e.waitBoots(3)
				if err := call("OTA.GetBootState", nil, &bs); err != nil || bs != committed0 {
					t.Fatalf("after timeout: %+v %v", bs, err)
				}
				if err := call("Sys.GetInfo", nil, &info); err != nil || info.FWVersion != "1.0.0" {
					t.Fatalf("Sys.GetInfo: %+v %v", info, err)
				}
			})
		}
	}
}
