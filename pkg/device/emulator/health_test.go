package emulator

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/ota/bundle"
)

// withHealth sets the health attributes of a test firmware.
func withHealth(method, value string) func(m *bundle.Manifest) {
	return func(m *bundle.Manifest) {
		if m.Extra == nil {
			m.Extra = map[string]json.RawMessage{}
		}
		if method != "" {
			m.Extra[HealthMethodAttribute], _ = json.Marshal(method)
		}
		if value != "" {
			m.Extra[HealthAttribute], _ = json.Marshal(value)
		}
	}
}

func (e *env) methods() []string {
	e.t.Helper()
	var ms []string
	if err := json.Unmarshal(e.mustCall("RPC.List", nil), &ms); err != nil {
		e.t.Fatal(err)
	}
	return ms
}

// A firmware's health method answers as its manifest says, so that CI can
// test both paths of `otactl update --commit --health-method`.
func TestFirmwareHealth(t *testing.T) {
	e := newEnv(t, nil)
	// The factory firmware is healthy, on the default method.
	if res := e.mustCall(DefaultHealthMethod, nil); string(res) != `{"healthy":true}` {
		t.Fatalf("factory %s: %s", DefaultHealthMethod, res)
	}

	e.update(fw{version: "2.0.0", edit: withHealth("", HealthFail)}, 300)
	_, err := e.call(DefaultHealthMethod, nil)
	wantErr(t, err, 500, "unhealthy")
	e.mustCall("Sys.GetInfo", nil) // the rest of the firmware answers
	if s := e.d.State(); s.Health != "fail" || s.HealthMethod != DefaultHealthMethod {
		t.Fatalf("%+v", s)
	}
	e.mustCall("OTA.Revert", nil)
	e.waitBoots(3)

	// late:30 on a method of its own: failing for 30 s after boot, then ok;
	// the default method is gone with the firmware that had it.
	e.update(fw{version: "2.0.1", edit: withHealth("Foo.Ready", "late:30")}, 300)
	ms := e.methods()
	if !slices.Contains(ms, "Foo.Ready") || slices.Contains(ms, DefaultHealthMethod) {
		t.Fatalf("RPC.List: %v", ms)
	}
	_, err = e.call(DefaultHealthMethod, nil)
	wantErr(t, err, 404, "No handler for "+DefaultHealthMethod)
	_, err = e.call("Foo.Ready", nil)
	wantErr(t, err, 503, "not ready: healthy 30 s after boot (up 0 s)")
	e.clock.Advance(29 * time.Second)
	_, err = e.call("Foo.Ready", nil)
	wantErr(t, err, 503, "not ready: healthy 30 s after boot (up 29 s)")
	e.clock.Advance(time.Second)
	e.mustCall("Foo.Ready", nil)
	e.mustCall("OTA.Commit", nil)

	// hang: the call gets no answer, and the device goes on answering
	// others. (The hung handler ends with the reboot below; goleak checks
	// that it does.)
	e.update(fw{version: "2.0.2", edit: withHealth("", HealthHang)}, 300)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	_, err = e.c.Call(ctx, DefaultHealthMethod, nil)
	cancel()
	if err == nil || ctx.Err() == nil {
		t.Fatalf("a hanging health method answered: %v", err)
	}
	e.mustCall("Sys.GetInfo", nil)
	e.d.Reboot()
	e.waitBoots(6)
	// The reboot left the uncommitted 2.0.2: back on 2.0.1, whose
	// Foo.Ready is late again after this boot.
	if s := e.d.State(); s.Version != "2.0.1" || s.Health != "late:30" || s.HealthMethod != "Foo.Ready" {
		t.Fatalf("after the reboot: %+v", s)
	}
	_, err = e.call("Foo.Ready", nil)
	wantErr(t, err, 503, "not ready: healthy 30 s after boot (up 0 s)")
}

// The health attributes cannot take over a method the device has, and
// unknown values answer as healthy (and say so in the log).
func TestFirmwareHealthAttributesChecked(t *testing.T) {
	e := newEnv(t, nil)
	e.update(fw{version: "2.0.0", edit: withHealth("Sys.GetInfo", HealthFail)}, 300)
	e.mustCall("Sys.GetInfo", nil)
	_, err := e.call(DefaultHealthMethod, nil)
	wantErr(t, err, 500, "unhealthy")
	e.mustCall("OTA.Revert", nil)
	e.waitBoots(3)
	for i, v := range []string{"late:x", "late:-1", "sick", ""} {
		e.update(fw{version: "3.0." + string(rune('0'+i)), edit: func(m *bundle.Manifest) {
			m.Extra = map[string]json.RawMessage{HealthAttribute: json.RawMessage(`"` + v + `"`)}
		}}, 300)
		e.mustCall(DefaultHealthMethod, nil)
		if s := e.d.State(); s.Health != HealthOK {
			t.Fatalf("%q: %+v", v, s)
		}
		e.mustCall("OTA.Revert", nil)
		e.waitBoots(e.d.State().Boots + 1)
	}
}
