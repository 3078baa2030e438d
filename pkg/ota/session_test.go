package ota_test

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/otactl/otactl/pkg/device/emulator"
	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/all"
	"github.com/otactl/otactl/pkg/transport/mqtt"
	"github.com/otactl/otactl/pkg/transport/mqtt/mqtttest"
	"github.com/otactl/otactl/pkg/transport/transporttest"
)

// Several emulated devices of one host, updated at once through one
// shared registry: each push, reboot, outcome wait (whose re-dials while
// the device is away and after it came back) and commit goes over one
// broker connection, every reply reaches its own device's calls, and the
// connection ends with the registry.
func TestFleetOverOneBrokerConnection(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, transporttest.LeakIgnores(ignore)...) })
	b := mqtttest.Start(t, mqtttest.Config{})
	h, err := emulator.NewHost(context.Background(), emulator.HostConfig{MQTTBroker: b.URL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	const n = 6
	dir := t.TempDir()
	cfgs := make([]emulator.Config, n)
	for i := range cfgs {
		id := fmt.Sprintf("dev-%04d", i+1)
		cfgs[i] = emulator.Config{ID: id, StateDir: filepath.Join(dir, id), RebootAfter: 10 * time.Millisecond, RebootDelay: 100 * time.Millisecond}
	}
	devs, err := h.AddDevices(context.Background(), cfgs)
	if err != nil {
		t.Fatal(err)
	}
	reg, sessions := all.NewSharedRegistry(mqtt.SessionsOptions{})
	t.Cleanup(func() { reg.Close() })
	data, fw := emuBundle(t, "2.0", "")

	update := func(d *emulator.Device) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		port := b.URL + "/" + d.ID()
		dial := func(ctx context.Context) (*rpc.Client, error) {
			conn, err := reg.Dial(ctx, port, transport.Options{})
			if err != nil {
				return nil, err
			}
			return rpc.NewClient(conn, rpc.ClientOptions{}), nil
		}
		c, err := dial(ctx)
		if err != nil {
			return err
		}
		dev := ota.New(c)
		before, err := dev.Observe(ctx)
		if err == nil && before.Info.ID != d.ID() {
			err = fmt.Errorf("Sys.GetInfo says id %q", before.Info.ID)
		}
		var res ota.PushResult
		if err == nil {
			res, err = dev.Push(ctx, bytes.NewReader(data), int64(len(data)), ota.PushOptions{CommitTimeout: time.Minute, Redial: dial})
		}
		c.Close()
		if err != nil {
			return err
		}
		o, oc, err := ota.WaitOutcome(ctx, ota.WaitOptions{Dial: dial, Before: before, Accepted: res.Confirmed, Expect: fw,
			AttemptTimeout: 300 * time.Millisecond, PollInterval: 20 * time.Millisecond,
			Backoff: ota.Backoff{Initial: 20 * time.Millisecond, Max: 100 * time.Millisecond}})
		if err != nil {
			return err
		}
		defer oc.Close()
		if o.Result != ota.UpdatedUncommitted || o.Info.ID != d.ID() || o.Info.FWVersion != "2.0" {
			return fmt.Errorf("outcome %+v", o)
		}
		return ota.New(oc).Commit(ctx)
	}

	var wg sync.WaitGroup
	errs := make(chan error, n)
	for _, d := range devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := update(d); err != nil {
				errs <- fmt.Errorf("%s: %w", d.ID(), err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, d := range devs {
		if s := d.State(); s.Version != "2.0" || !s.Boot.IsCommitted || s.Boots != 2 {
			t.Errorf("%s: state %+v", d.ID(), s)
		}
	}
	if c := b.Connects("otactl-"); c != 1 {
		t.Errorf("%d devices updated over %d broker connections, want 1", n, c)
	}
	if st := sessions.Stats(); st.Connects != 1 || st.Peak != 1 || st.Devices != n {
		t.Errorf("stats %+v", st)
	}
	reg.Close()
	if st := sessions.Stats(); st.Open != 0 {
		t.Errorf("after the registry closed: %+v", st)
	}
}
