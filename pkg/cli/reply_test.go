package cli

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/otactl/otactl/pkg/rpc"
	httptransport "github.com/otactl/otactl/pkg/transport/http"
)

// oddDevice answers method with reply (a result, or an *rpc.Error with
// code 0 and no result), and everything else as a committed device.
func oddDevice(t *testing.T, method string, reply func() (any, error)) string {
	t.Helper()
	s := rpc.NewServer("dev1")
	normal := map[string]any{
		"Sys.GetInfo":        map[string]any{"id": "dev1", "app": "app", "arch": "esp32", "fw_version": "1.0", "fw_id": "b1", "uptime": 3600},
		"OTA.GetBootState":   map[string]any{"active_slot": 0, "revert_slot": 0, "is_committed": false, "commit_timeout": 300},
		"OTA.Status":         map[string]any{"state": 0},
		"OTA.CreateSnapshot": map[string]any{"slot": 1},
		"OTA.Commit":         nil,
		"OTA.SetBootState":   nil,
	}
	for name, res := range normal {
		s.Handle(name, func(context.Context, *rpc.Request) (any, error) {
			if name == method {
				return reply()
			}
			return res, nil
		})
	}
	srv := httptest.NewServer(httptransport.NewHandler(s, httptransport.HandlerOptions{}))
	t.Cleanup(srv.Close)
	return srv.URL + "/rpc"
}

// A reply that lacks the fields a command needs is an error (exit 1) that
// says which fields are missing and what the device sent — never an
// invented state — with the same exit code in text and JSON mode.
func TestRepliesLackingFieldsAreErrors(t *testing.T) {
	noResult := func() (any, error) { return nil, nil }
	codeZero := func() (any, error) { return nil, rpc.Errorf(0, "done") }
	for _, tc := range []struct {
		method string
		reply  func() (any, error)
		args   []string
		want   []string
	}{
		{"OTA.GetBootState", noResult, []string{"bootstate"}, []string{"OTA.GetBootState", "lacks active_slot, is_committed, revert_slot", "no result"}},
		{"OTA.GetBootState", codeZero, []string{"bootstate"}, []string{"lacks active_slot, is_committed, revert_slot"}},
		{"OTA.GetBootState", func() (any, error) { return map[string]any{"active_slot": 1, "revert_slot": 0}, nil }, []string{"bootstate"},
			[]string{"lacks is_committed", `"active_slot":1`}},
		{"OTA.GetBootState", func() (any, error) {
			return map[string]any{"active_slot": "one", "is_committed": true, "revert_slot": 0}, nil
		}, []string{"bootstate"}, []string{`active_slot that is not an integer: "one"`}},
		{"OTA.GetBootState", func() (any, error) { return []int{1, 2}, nil }, []string{"bootstate"}, []string{"lacks active_slot"}},
		{"OTA.GetBootState", noResult, []string{"bootstate", "set", "--active-slot", "0"}, []string{"lacks active_slot"}},
		{"OTA.GetBootState", noResult, []string{"commit"}, []string{"lacks active_slot"}},
		{"OTA.GetBootState", noResult, []string{"update", "--url", "http://127.0.0.1:1/fw.zip"}, []string{"lacks active_slot"}},
		{"Sys.GetInfo", noResult, []string{"bootstate"}, []string{"Sys.GetInfo", "not a JSON object"}},
		{"Sys.GetInfo", codeZero, []string{"update", "--url", "http://127.0.0.1:1/fw.zip"}, []string{"Sys.GetInfo", "not a JSON object"}},
		{"OTA.Status", func() (any, error) { return map[string]any{"msg": "idle"}, nil }, []string{"status"}, []string{"OTA.Status", "lacks state"}},
		{"OTA.Status", codeZero, []string{"status"}, []string{"lacks state"}},
		{"OTA.CreateSnapshot", noResult, []string{"snapshot"}, []string{"OTA.CreateSnapshot", "lacks slot"}},
	} {
		for _, jsonOut := range []bool{false, true} {
			port := oddDevice(t, tc.method, tc.reply)
			args := append([]string{"--port", port}, tc.args...)
			if jsonOut {
				args = append(args, "--json")
			}
			r := run(t, nil, args...)
			if r.code != ExitFailure {
				t.Errorf("%v: exit %d, stdout %q, stderr %q; want 1", args, r.code, r.stdout, r.stderr)
				continue
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("%v: stderr %q lacks %q", args, r.stderr, w)
				}
			}
			if jsonOut {
				var doc map[string]any
				if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil || doc["exit_code"] != float64(ExitFailure) {
					t.Errorf("%v: stdout %q (%v)", args, r.stdout, err)
				}
			} else if strings.Contains(r.stdout, "running") || strings.Contains(r.stdout, "slot 0") {
				t.Errorf("%v: stdout %q describes a state the device did not send", args, r.stdout)
			}
		}
	}
}

// Real devices vary: numeric strings and 0/1 booleans are read, missing
// optional fields are left out.
func TestRepliesReadLeniently(t *testing.T) {
	port := oddDevice(t, "OTA.GetBootState", func() (any, error) {
		return map[string]any{"active_slot": "1", "is_committed": 1, "revert_slot": 0}, nil
	})
	r := run(t, nil, "--port", port, "--json", "bootstate")
	var doc map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil || r.code != 0 ||
		doc["active_slot"] != float64(1) || doc["is_committed"] != true || doc["commit_timeout"] != float64(0) {
		t.Fatalf("exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
}
