package cli

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/rpc"
)

// healthDevice is a scripted device that reboots at once into 2.0 on slot 1
// (uncommitted, commit timeout 300) at OTA.Update; App.Health answers as
// health says (n counts from 1); OTA.Revert reboots it into 1.0 on slot 0.
func healthDevice(health func(ctx context.Context, n int64) error) (*scriptedDevice, *atomic.Int64, *atomic.Int64) {
	var calls, reverts atomic.Int64
	d := newScriptedDevice()
	d.onUpdate = func(d *scriptedDevice) {
		d.version, d.bootedAt = "2.0", time.Now()
		d.boot = map[string]any{"active_slot": 1, "revert_slot": 0, "is_committed": false, "commit_timeout": 300}
	}
	d.handlers = map[string]rpc.HandlerFunc{
		"App.Health": func(ctx context.Context, _ *rpc.Request) (any, error) {
			if err := health(ctx, calls.Add(1)); err != nil {
				return nil, err
			}
			return map[string]any{"ok": true}, nil
		},
		"OTA.Revert": func(context.Context, *rpc.Request) (any, error) {
			reverts.Add(1)
			d.mu.Lock()
			defer d.mu.Unlock()
			if d.boot["is_committed"] == true {
				return nil, &rpc.Error{Code: -1}
			}
			d.version, d.bootedAt = "1.0", time.Now()
			d.boot = map[string]any{"active_slot": 0, "revert_slot": 0, "is_committed": true, "commit_timeout": 0}
			return nil, nil
		},
	}
	return d, &calls, &reverts
}

func updateArgs(port string, jsonOut bool, extra ...string) []string {
	args := append([]string{"--port", port, "--timeout", "1s", "update", "--url", "http://127.0.0.1:1/fw.zip", "--commit", "--health-method", "App.Health"}, extra...)
	if jsonOut {
		args = append(args, "--json")
	}
	return args
}

// A health method that fails for a while, or answers late, is retried for
// the grace period: the firmware is committed once it answers.
func TestHealthCheckRetriedWithinGrace(t *testing.T) {
	for name, health := range map[string]func(context.Context, int64) error{
		"fails twice": func(_ context.Context, n int64) error {
			if n <= 2 {
				return rpc.Errorf(-1, "sensor not ready")
			}
			return nil
		},
		"answers late once": func(ctx context.Context, n int64) error {
			if n == 1 {
				select { // longer than the 1s each call may take
				case <-time.After(1500 * time.Millisecond):
				case <-ctx.Done():
				}
			}
			return nil
		},
	} {
		d, calls, reverts := healthDevice(health)
		port := d.start(t)
		r := run(t, nil, updateArgs(port, true, "--health-grace", "10s")...)
		doc := jsonDoc(t, r.stdout)
		if r.code != 0 || doc["result"] != "updated_committed" || doc["reason"] != "ok" || calls.Load() < 2 || reverts.Load() != 0 {
			t.Errorf("%s: exit %d, %d health calls, %d reverts, stdout %q stderr %q", name, r.code, calls.Load(), reverts.Load(), r.stdout, r.stderr)
		}
	}
}

// A health check that never passes within the grace period reverts the
// device at once (result rolled_back, reason health_failed, exit 6); with
// --on-health-fail wait it stays uncommitted to fall back by itself.
func TestHealthCheckFailureRevertsOrWaits(t *testing.T) {
	failing := func(context.Context, int64) error { return rpc.Errorf(-1, "sensor missing") }
	for _, jsonOut := range []bool{false, true} {
		d, calls, reverts := healthDevice(failing)
		port := d.start(t)
		start := time.Now()
		r := run(t, nil, updateArgs(port, jsonOut, "--health-grace", "2s")...)
		if r.code != ExitUpdate || reverts.Load() != 1 || calls.Load() < 2 || time.Since(start) < 2*time.Second {
			t.Fatalf("revert, json=%v: exit %d, %d calls, %d reverts after %v; stdout %q stderr %q", jsonOut, r.code, calls.Load(), reverts.Load(), time.Since(start), r.stdout, r.stderr)
		}
		if jsonOut {
			doc := jsonDoc(t, r.stdout)
			after, _ := doc["after"].(map[string]any)
			if doc["result"] != "rolled_back" || doc["reason"] != "health_failed" || doc["exit_code"] != float64(6) || doc["version"] != "1.0" ||
				after["active_slot"] != float64(0) || !strings.Contains(doc["message"].(string), "sensor missing") {
				t.Errorf("revert document %q", r.stdout)
			}
		} else if !strings.HasPrefix(r.stdout, "ROLLED BACK: health check failed: App.Health did not answer without error within 2s") ||
			!strings.Contains(r.stdout, "otactl reverted it: slot 0 runs 1.0 (build b1.0) again, committed") {
			t.Errorf("revert stdout %q", r.stdout)
		}

		d, _, reverts = healthDevice(failing)
		port = d.start(t)
		r = run(t, nil, updateArgs(port, jsonOut, "--health-grace", "1s", "--on-health-fail", "wait")...)
		d.mu.Lock()
		committed := d.boot["is_committed"]
		d.mu.Unlock()
		if r.code != ExitUpdate || reverts.Load() != 0 || committed != false {
			t.Fatalf("wait, json=%v: exit %d, %d reverts, committed %v; stdout %q", jsonOut, r.code, reverts.Load(), committed, r.stdout)
		}
		if jsonOut {
			doc := jsonDoc(t, r.stdout)
			if doc["result"] != "health_check_failed" || doc["reason"] != "health_failed" || doc["committed"] != false ||
				doc["commit_timeout_left_seconds"] == nil || !strings.Contains(doc["message"].(string), "falls back to slot 0 when its commit timeout expires") {
				t.Errorf("wait document %q", r.stdout)
			}
		} else if !strings.HasPrefix(r.stdout, "HEALTH CHECK FAILED: ") || !strings.Contains(r.stdout, "(--on-health-fail wait)") {
			t.Errorf("wait stdout %q", r.stdout)
		}
	}
}

// Health flags that cannot work are usage errors.
func TestHealthFlagsChecked(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--health-grace", "5m", "--commit-timeout", "300"}, "must be shorter than the commit timeout"},
		{[]string{"--commit-timeout", "0", "--force"}, "cannot gate a firmware that commits itself at boot"},
		{[]string{"--on-health-fail", "ignore"}, "--on-health-fail takes 'revert' or 'wait'"},
	} {
		r := run(t, nil, updateArgs("http://127.0.0.1:1/rpc", false, tc.args...)...)
		if r.code != ExitUsage || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%v: exit %d stderr %q", tc.args, r.code, r.stderr)
		}
	}
}
