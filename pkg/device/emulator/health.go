package emulator

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/otactl/otactl/pkg/ota/bundle"
	"github.com/otactl/otactl/pkg/ota/wire"
	"github.com/otactl/otactl/pkg/rpc"
)

// Firmware health: every firmware the emulator boots has a health method
// (the one `otactl update --health-method` calls), whose name and answer
// come from two top-level manifest attributes (docs/emulator.md, "Firmware
// health").
const (
	// HealthMethodAttribute names the firmware's health method. Default
	// DefaultHealthMethod. A name the device already uses (OTA.*,
	// Sys.GetInfo, …) is ignored with a warning.
	HealthMethodAttribute = "emulator_health_method"
	// DefaultHealthMethod is the health method of a firmware that does not
	// name one.
	DefaultHealthMethod = wire.AppHealth
	// HealthAttribute says how the health method answers: HealthOK,
	// HealthFail, "late:N" (HealthLatePrefix) or HealthHang.
	HealthAttribute = "emulator_health"
	// HealthOK: answers {"healthy": true} (the default, also for unknown
	// values).
	HealthOK = "ok"
	// HealthFail: answers error 500 "unhealthy".
	HealthFail = "fail"
	// HealthLatePrefix: "late:N" answers error 503 for the first N seconds
	// after boot (on the device's clock), then as HealthOK.
	HealthLatePrefix = "late:"
	// HealthHang: never answers (the call times out), until the device
	// reboots.
	HealthHang = "hang"
)

// health is the health behaviour of the running firmware.
type health struct {
	method string
	kind   string        // HealthOK, HealthFail, HealthHang or "late"
	late   time.Duration // for "late"
}

func (h health) String() string {
	if h.kind == "late" {
		return HealthLatePrefix + strconv.FormatInt(int64(h.late/time.Second), 10)
	}
	return h.kind
}

// firmwareHealth reads m's health attributes. Values it does not
// understand are logged and read as the defaults.
func (d *Device) firmwareHealth(m *bundle.Manifest) health {
	h := health{method: DefaultHealthMethod, kind: HealthOK}
	if m == nil {
		return h
	}
	if raw, ok := m.Extra[HealthMethodAttribute]; ok {
		var name string
		switch {
		case json.Unmarshal(raw, &name) != nil || name == "":
			d.log.Warn("ignoring "+HealthMethodAttribute+": not a method name", "value", string(raw), "using", DefaultHealthMethod)
		case d.builtin[name]:
			d.log.Warn("ignoring "+HealthMethodAttribute+": the device has that method already", "value", name, "using", DefaultHealthMethod)
		default:
			h.method = name
		}
	}
	raw, ok := m.Extra[HealthAttribute]
	if !ok {
		return h
	}
	var v string
	_ = json.Unmarshal(raw, &v)
	switch {
	case v == HealthOK, v == HealthFail, v == HealthHang:
		h.kind = v
		return h
	case strings.HasPrefix(v, HealthLatePrefix):
		n, err := strconv.Atoi(strings.TrimPrefix(v, HealthLatePrefix))
		if err == nil && n >= 0 {
			h.kind, h.late = "late", time.Duration(n)*time.Second
			return h
		}
	}
	d.log.Warn("unknown "+HealthAttribute+": answering as \"ok\" (known: ok, fail, late:N, hang)", "value", string(raw))
	return h
}

// setHealthLocked makes h the running firmware's health method, replacing
// the previous firmware's.
func (d *Device) setHealthLocked(h health) {
	if d.health.method != "" && d.health.method != h.method {
		d.srv.Remove(d.health.method)
	}
	d.health = h
	d.srv.Handle(h.method, d.healthCheck)
}

// healthCheck is the running firmware's health method.
func (d *Device) healthCheck(ctx context.Context, req *rpc.Request) (any, error) {
	d.mu.Lock()
	h, booted, epoch := d.health, d.bootTime, d.epoch
	d.mu.Unlock()
	if req.Method != h.method { // the firmware changed under this call
		return nil, rpc.NoHandler(req.Method)
	}
	switch h.kind {
	case HealthFail:
		return nil, rpc.Errorf(500, "unhealthy")
	case HealthHang:
		select {
		case <-ctx.Done():
		case <-epoch.Done(): // a reboot ends it; the reply is dropped
		}
		return nil, rpc.Errorf(-1, "health check abandoned")
	case "late":
		if up := d.clock.Now().Sub(booted); up < h.late {
			return nil, rpc.Errorf(503, "not ready: healthy %d s after boot (up %d s)", int64(h.late/time.Second), int64(up/time.Second))
		}
	}
	return map[string]bool{"healthy": true}, nil
}
