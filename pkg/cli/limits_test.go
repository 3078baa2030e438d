package cli

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/otactl/otactl/pkg/rpc"
	httptransport "github.com/otactl/otactl/pkg/transport/http"
)

// recordingDevice answers every OTA method as a committed device would and
// records what it was sent.
type recordingDevice struct {
	mu    sync.Mutex
	calls map[string][]string
}

func (d *recordingDevice) start(t *testing.T) string {
	t.Helper()
	d.calls = map[string][]string{}
	s := rpc.NewServer("dev1")
	rec := func(name string, res any) {
		s.Handle(name, func(_ context.Context, r *rpc.Request) (any, error) {
			d.mu.Lock()
			d.calls[name] = append(d.calls[name], string(r.Params))
			d.mu.Unlock()
			return res, nil
		})
	}
	rec("Sys.GetInfo", map[string]any{"id": "dev1", "app": "app", "arch": "esp32", "fw_version": "1.0", "fw_id": "b1", "uptime": 3600})
	rec("OTA.GetBootState", map[string]any{"active_slot": 0, "revert_slot": 0, "is_committed": true, "commit_timeout": 0})
	rec("OTA.Status", map[string]any{"state": 0})
	rec("OTA.Update", nil)
	rec("OTA.Begin", nil)
	rec("OTA.SetBootState", nil)
	rec("OTA.CreateSnapshot", map[string]any{"slot": 1})
	srv := httptest.NewServer(httptransport.NewHandler(s, httptransport.HandlerOptions{}))
	t.Cleanup(srv.Close)
	return srv.URL + "/rpc"
}

func (d *recordingDevice) sent(method string) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.calls[method]...)
}

// A commit timeout the device cannot hold (it arms its timer in
// milliseconds in a signed 32-bit int) must never reach it: huge values
// used to wrap to 0, which removes the rollback. Each is a usage error that
// names the range, in text and JSON mode, and nothing is sent.
func TestTimeoutsOutOfRangeAreUsageErrors(t *testing.T) {
	bundle := writeTestBundle(t, t.TempDir())
	for _, tc := range []struct {
		method string
		args   []string
	}{
		{"OTA.Update", []string{"update", "--url", "http://127.0.0.1:1/fw.zip", "--commit-timeout", "9223372036"}},
		{"OTA.Update", []string{"update", "--url", "http://127.0.0.1:1/fw.zip", "--commit-timeout", "10000000000"}},
		{"OTA.Update", []string{"update", "--url", "http://127.0.0.1:1/fw.zip", "--commit-timeout", "2562048h"}},
		{"OTA.Update", []string{"update", "--url", "http://127.0.0.1:1/fw.zip", "--commit-timeout", "2147484"}},
		{"OTA.Update", []string{"update", "--url", "http://127.0.0.1:1/fw.zip", "--commit-timeout", "-1"}},
		{"OTA.Update", []string{"update", "--url", "http://127.0.0.1:1/fw.zip", "--commit-timeout", "-5m"}},
		{"OTA.Update", []string{"update", "--url", "http://127.0.0.1:1/fw.zip", "--force", "--commit-timeout", "9223372036854775807"}},
		{"OTA.Update", []string{"update", "--url", "http://127.0.0.1:1/fw.zip", "--update-timeout", "9223372036"}},
		{"OTA.Update", []string{"update", "--url", "http://127.0.0.1:1/fw.zip", "--update-timeout", "2147484"}},
		{"OTA.Begin", []string{"push", bundle, "--commit-timeout", "10000000000"}},
		{"OTA.Begin", []string{"push", bundle, "--update-timeout", "2562048h"}},
		{"OTA.SetBootState", []string{"bootstate", "set", "--commit-timeout", "9223372036"}},
		{"OTA.SetBootState", []string{"bootstate", "set", "--commit-timeout", "-1"}},
		{"OTA.CreateSnapshot", []string{"snapshot", "--set-as-revert", "--commit-timeout", "10000000000"}},
	} {
		for _, jsonOut := range []bool{false, true} {
			d := &recordingDevice{}
			port := d.start(t)
			args := append([]string{"--port", port}, tc.args...)
			if jsonOut {
				args = append(args, "--json")
			}
			r := run(t, nil, args...)
			if r.code != ExitUsage || !strings.Contains(r.stderr, "2147483") {
				t.Errorf("%v: exit %d, stderr %q: want a usage error naming the range", args, r.code, r.stderr)
			}
			if jsonOut {
				var doc map[string]any
				if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil || doc["exit_code"] != float64(ExitUsage) {
					t.Errorf("%v: stdout %q (%v)", args, r.stdout, err)
				}
			}
			if got := d.sent(tc.method); len(got) != 0 {
				t.Errorf("%v: %s was sent %v", args, tc.method, got)
			}
		}
	}
}

// The largest value that fits goes out as it is.
func TestTimeoutsAtTheLimitAreSent(t *testing.T) {
	d := &recordingDevice{}
	port := d.start(t)
	r := run(t, nil, "--port", port, "bootstate", "set", "--commit-timeout", "2147483")
	if r.code != 0 {
		t.Fatalf("exit %d stderr %q", r.code, r.stderr)
	}
	if got := d.sent("OTA.SetBootState"); len(got) != 1 || got[0] != `{"commit_timeout":2147483}` {
		t.Fatalf("sent %q", got)
	}
}
