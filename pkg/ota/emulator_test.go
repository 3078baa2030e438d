package ota_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/device/emulator"
	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/ota/bundle"
	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/transport/pipe"
)

// emuBundle builds a bundle for the emulator's platform.
func emuBundle(t *testing.T, version, behavior string) ([]byte, ota.Firmware) {
	t.Helper()
	m := &bundle.Manifest{Name: "app", Platform: "esp32", Version: version, BuildID: "build-" + version}
	if behavior != "" {
		m.Extra = map[string]json.RawMessage{emulator.BehaviorAttribute: json.RawMessage(`"` + behavior + `"`)}
	}
	var b bytes.Buffer
	parts := []bundle.PartData{bundle.BytesData("app", bundle.Part{Type: "app", Src: "app.bin"}, bytes.Repeat([]byte(version), 3000))}
	if err := bundle.Create(&b, m, parts, nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes(), ota.Firmware{Version: version, BuildID: "build-" + version}
}

// emuCase runs one push + WaitOutcome against a real emulator served
// through the in-process pipe: a link that never looks away, like a serial
// port or an MQTT client that stays connected to its broker while the
// device reboots. Its ManualClock drives uptime and the commit timer.
type emuCase struct {
	version, behavior string
	commitTimeout     time.Duration
	upBefore          time.Duration // device uptime when observed (0: just booted)
	rebootDelay       time.Duration
	// during runs while WaitOutcome waits (e.g. to fire the commit timer).
	during func(t *testing.T, d *emulator.Device, clk *emulator.ManualClock)
}

func (tc emuCase) run(t *testing.T) (*ota.Outcome, error, *emulator.Device) {
	t.Helper()
	clk := emulator.NewManualClock(time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC))
	d, err := emulator.New(emulator.Config{StateDir: t.TempDir(), Clock: clk, RebootDelay: tc.rebootDelay, RebootAfter: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	clk.Advance(tc.upBefore)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := rpc.NewClient(pipe.New(d.Handler()), rpc.ClientOptions{})
	dev := ota.New(c)
	before, err := dev.Observe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	data, fw := emuBundle(t, tc.version, tc.behavior)
	res, err := dev.Push(ctx, bytes.NewReader(data), int64(len(data)), ota.PushOptions{CommitTimeout: tc.commitTimeout})
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	// The device reboots RebootAfter after OTA.End's reply, on its clock
	// (calls meanwhile get error 418, the pre-reboot window).
	clk.Advance(20 * time.Millisecond)
	// The device stays off for its reboot delay on its clock: let a few
	// attempts go unanswered, then move the clock past it (each time: a
	// crash at boot reboots again).
	stopOff := make(chan struct{})
	offDone := make(chan struct{})
	go func() {
		defer close(offDone)
		for {
			select {
			case <-stopOff:
				return
			case <-time.After(time.Millisecond):
			}
			if until := d.State().OffUntil; !until.IsZero() {
				time.Sleep(tc.rebootDelay)
				clk.Advance(until.Sub(clk.Now()))
			}
		}
	}()
	defer func() {
		close(stopOff)
		<-offDone
	}()
	done := make(chan struct{})
	if tc.during != nil {
		go func() {
			defer close(done)
			tc.during(t, d, clk)
		}()
	} else {
		close(done)
	}
	dial := func(ctx context.Context) (*rpc.Client, error) {
		return rpc.NewClient(pipe.New(d.Handler()), rpc.ClientOptions{}), nil
	}
	o, oc, err := ota.WaitOutcome(ctx, ota.WaitOptions{Dial: dial, Before: before, Accepted: res.Confirmed, Expect: fw,
		AttemptTimeout: 200 * time.Millisecond, PollInterval: 20 * time.Millisecond, Backoff: ota.Backoff{Initial: 20 * time.Millisecond, Max: 100 * time.Millisecond},
		RebootTimeout: 5 * time.Second})
	if oc != nil {
		oc.Close()
	}
	<-done
	return o, err, d
}

// waitState polls the emulator until cond holds.
func waitState(t *testing.T, d *emulator.Device, what string, cond func(emulator.State) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond(d.State()) {
		if time.Now().After(deadline) {
			t.Errorf("emulator never reached %s: %+v", what, d.State())
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The verdicts on the real emulator, over a link that never looks away,
// for a device up an hour and one that has just booted, with and without a
// reboot delay.
func TestWaitOutcomeOnEmulator(t *testing.T) {
	for _, up := range []time.Duration{time.Hour, 0} {
		for _, delay := range []time.Duration{0, 150 * time.Millisecond} {
			name := func(s string) string { return fmt.Sprintf("%s/up=%v/delay=%v", s, up, delay) }
			t.Run(name("ok"), func(t *testing.T) {
				o, err, _ := emuCase{version: "2.0", upBefore: up, rebootDelay: delay}.run(t)
				if err != nil || o.Result != ota.UpdatedUncommitted || o.Info.FWVersion != "2.0" || o.After.ActiveSlot != 1 {
					t.Fatalf("outcome %+v, %v", o, err)
				}
			})
			t.Run(name("same version"), func(t *testing.T) {
				o, err, _ := emuCase{version: emulator.DefaultFactoryVersion, upBefore: up, rebootDelay: delay}.run(t)
				if err != nil || o.Result != ota.UpdatedUncommitted || o.After.ActiveSlot != 1 {
					t.Fatalf("outcome %+v, %v", o, err)
				}
			})
			t.Run(name("auto commit"), func(t *testing.T) {
				o, err, _ := emuCase{version: "2.0", commitTimeout: ota.AutoCommit, upBefore: up, rebootDelay: delay}.run(t)
				if err != nil || o.Result != ota.UpdatedCommitted || o.Info.FWVersion != "2.0" {
					t.Fatalf("outcome %+v, %v", o, err)
				}
			})
			t.Run(name("crash on boot"), func(t *testing.T) {
				o, err, _ := emuCase{version: "2.0", behavior: emulator.BehaviorCrashOnBoot, upBefore: up, rebootDelay: delay}.run(t)
				if !errors.Is(err, ota.ErrUpdateFailed) || o == nil || o.Result != ota.RolledBack || o.Info.FWVersion != "1.0.0" {
					t.Fatalf("outcome %+v, %v", o, err)
				}
			})
			t.Run(name("no rpc"), func(t *testing.T) {
				o, err, _ := emuCase{version: "2.0", behavior: emulator.BehaviorNoRPC, commitTimeout: 30 * time.Second, upBefore: up, rebootDelay: delay,
					during: func(t *testing.T, d *emulator.Device, clk *emulator.ManualClock) {
						waitState(t, d, "no_rpc running with its commit timer", func(s emulator.State) bool {
							return s.Behavior == emulator.BehaviorNoRPC && s.CommitTimerArmed
						})
						time.Sleep(300 * time.Millisecond) // a few attempts go unanswered
						clk.Advance(30 * time.Second)
					}}.run(t)
				if !errors.Is(err, ota.ErrUpdateFailed) || o == nil || o.Result != ota.RolledBack || o.Info.FWVersion != "1.0.0" {
					t.Fatalf("outcome %+v, %v", o, err)
				}
			})
		}
	}
}
