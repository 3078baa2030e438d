package ota_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/device/emulator"
	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/ota/bundle"
	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/all"
)

// portDial dials the device at port over its real transport.
func portDial(port string) ota.Dialer {
	reg := all.NewRegistry()
	return func(ctx context.Context) (*rpc.Client, error) {
		conn, err := reg.Dial(ctx, port, transport.Options{})
		if err != nil {
			return nil, err
		}
		return rpc.NewClient(conn, rpc.ClientOptions{}), nil
	}
}

// emuLargeBundle is a bundle for the emulator big enough (800 KB) that
// its download makes dozens of flash writes.
func emuLargeBundle(t *testing.T) []byte {
	t.Helper()
	m := &bundle.Manifest{Name: "app", Platform: "esp32", Version: "2.0", BuildID: "build-2.0"}
	var b bytes.Buffer
	parts := []bundle.PartData{bundle.BytesData("app", bundle.Part{Type: "app", Src: "app.bin"}, payload(800<<10))}
	if err := bundle.Create(&b, m, parts, nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// startEmu starts an emulator on dir, HTTP and WebSocket on listen, with a
// flash hook; it returns the device and its WebSocket port (closed at
// cleanup). (A WebSocket drops at a power cut, as any link to a killed
// emulator process does; the in-process emulator still answers an HTTP
// request in flight with an empty 200.)
func startEmu(t *testing.T, dir, listen string, hook func(emulator.FlashWrite) error) (*emulator.Device, string, error) {
	d, err := emulator.New(emulator.Config{StateDir: dir, Listen: listen, Hooks: emulator.Hooks{FlashWrite: hook}})
	if err != nil {
		return nil, "", err
	}
	t.Cleanup(func() { d.Close() })
	if err := d.Start(context.Background()); err != nil {
		return nil, "", err
	}
	for _, l := range d.Listeners() {
		if l.Transport == "ws" {
			return d, l.Addr, nil
		}
	}
	return nil, "", errors.New("no ws listener")
}

// A power cut while the device downloads the bundle of `update --url`
// leaves nothing installed: whatever the point of the cut, the verdict is
// NotApplied (the device never confirmed the update), never RolledBack.
// The cuts fall after 20 different amounts of the bundle were served, and
// at the last three flash writes before the update would be finalized.
func TestPowerCutDuringURLDownloadIsNotApplied(t *testing.T) {
	if testing.Short() {
		t.Skip("23 power cuts")
	}
	bundleBytes := emuLargeBundle(t)
	type cut struct {
		afterBytes int                             // served before the cut (0: none)
		hook       func(emulator.FlashWrite) error // or a cut at a flash write
		what       string
	}
	var cuts []cut
	for i := 1; i <= 20; i++ {
		n := i * len(bundleBytes) / 21
		cuts = append(cuts, cut{afterBytes: n, what: fmt.Sprintf("after %d of %d bytes", n, len(bundleBytes))})
	}
	cuts = append(cuts,
		cut{hook: emulator.PowerCutAt(1, "manifest"), what: "writing the new slot's manifest"},
		cut{hook: emulator.PowerCutAt(1, "bootstate"), what: "writing the new boot state"},
		cut{hook: emulator.PowerCutAt(1, "bootstate-commit"), what: "renaming the new boot state into place"})

	var current atomic.Pointer[emulator.Device]
	var cutAt atomic.Int64
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(bundleBytes)))
		limit := int(cutAt.Load())
		for off := 0; off < len(bundleBytes); off += 4096 {
			end := min(off+4096, len(bundleBytes))
			if limit > 0 && end >= limit {
				end = limit
			}
			if _, err := w.Write(bundleBytes[off:end]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			if limit > 0 && end == limit {
				current.Load().PowerCut()
				return
			}
		}
	}))
	defer web.Close()

	for _, c := range cuts {
		dir := t.TempDir()
		cutAt.Store(int64(c.afterBytes))
		d, port, err := startEmu(t, dir, "127.0.0.1:0", c.hook)
		if err != nil {
			t.Fatal(err)
		}
		current.Store(d)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		dial := portDial(port)
		cl, err := dial(ctx)
		if err != nil {
			t.Fatal(err)
		}
		dev := ota.New(cl)
		before, err := dev.Observe(ctx)
		if err != nil {
			t.Fatal(err)
		}
		acc, err := dev.Update(ctx, ota.UpdateArgs{URL: web.URL + "/fw.zip", CommitTimeout: 300 * time.Second})
		cl.Close()
		if err != nil {
			t.Fatalf("cut %s: Update: %v", c.what, err)
		}
		<-d.Done()
		d.Close()
		// Power on again from the same flash, at the same address, while
		// otactl waits.
		powerOn := make(chan error, 1)
		go func() {
			time.Sleep(100 * time.Millisecond)
			_, _, err := startEmu(t, dir, strings.TrimSuffix(strings.TrimPrefix(port, "ws://"), "/rpc"), nil)
			powerOn <- err
		}()
		o, oc, err := ota.WaitOutcome(ctx, ota.WaitOptions{Dial: dial, Before: before, Accepted: acc.Confirmed,
			AttemptTimeout: time.Second, PollInterval: 20 * time.Millisecond,
			Backoff: ota.Backoff{Initial: 20 * time.Millisecond, Max: 100 * time.Millisecond}, RebootTimeout: 5 * time.Second})
		if oc != nil {
			oc.Close()
		}
		cancel()
		if err := <-powerOn; err != nil {
			t.Fatalf("cut %s: powering on again: %v", c.what, err)
		}
		if o == nil || o.Result != ota.NotApplied || !errors.Is(err, ota.ErrUpdateFailed) || acc.Confirmed {
			t.Fatalf("cut %s: confirmed %v, outcome %+v, %v", c.what, acc.Confirmed, o, err)
		}
		if !strings.Contains(o.Message, "restarted before it had installed the update") || o.After != before.Boot || o.Info.FWVersion != emulator.DefaultFactoryVersion {
			t.Fatalf("cut %s: %+v", c.what, o)
		}
	}
}
