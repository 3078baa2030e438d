package ota_test

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/rpc"
)

// A commit timeout or update watchdog the device cannot hold (it arms its
// timers in milliseconds in a signed 32-bit int) is refused before
// anything is sent: on the device it would wrap, possibly to 0, which
// makes the new firmware commit itself at boot.
func TestTimeoutsBeyondTheDeviceAreRefused(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		dev := ota.New(d.client(t))
		tooLong := ota.MaxTimeout + time.Second
		for name, call := range map[string]func() error{
			"update commit": func() error {
				_, err := dev.Update(ctx, ota.UpdateArgs{URL: "http://h/fw.zip", CommitTimeout: tooLong})
				return err
			},
			"update negative commit": func() error {
				_, err := dev.Update(ctx, ota.UpdateArgs{URL: "http://h/fw.zip", CommitTimeout: -2 * time.Second})
				return err
			},
			"update watchdog": func() error {
				_, err := dev.Update(ctx, ota.UpdateArgs{URL: "http://h/fw.zip", Timeout: 9223372036 * time.Second})
				return err
			},
			"push commit": func() error {
				_, err := dev.Push(ctx, bytes.NewReader(payload(10)), 10, ota.PushOptions{CommitTimeout: tooLong})
				return err
			},
			"push watchdog": func() error {
				_, err := dev.Push(ctx, bytes.NewReader(payload(10)), 10, ota.PushOptions{Timeout: tooLong})
				return err
			},
			"snapshot": func() error {
				_, err := dev.CreateSnapshot(ctx, true, ota.MaxTimeoutSeconds+1)
				return err
			},
			"set boot state": func() error {
				return dev.SetBootState(ctx, ota.BootStateChange{CommitTimeout: new(ota.MaxTimeoutSeconds + 1)})
			},
			"set boot state negative": func() error {
				return dev.SetBootState(ctx, ota.BootStateChange{CommitTimeout: new(-1)})
			},
		} {
			if err := call(); !errors.Is(err, ota.ErrTimeoutRange) {
				t.Errorf("%s: %v, want ErrTimeoutRange", name, err)
			}
		}
		for _, m := range []string{"OTA.Update", "OTA.Status", "OTA.Begin", "OTA.CreateSnapshot", "OTA.SetBootState"} {
			if n := d.count(m); n != 0 {
				t.Errorf("%s was called %d times", m, n)
			}
		}
		// The limit itself goes out as is.
		var sent string
		d.srv.Handle("OTA.Update", func(_ context.Context, r *rpc.Request) (any, error) {
			sent = string(r.Params)
			return nil, nil
		})
		if _, err := dev.Update(ctx, ota.UpdateArgs{URL: "http://h/fw.zip", CommitTimeout: ota.MaxTimeout, Timeout: ota.MaxTimeout}); errors.Is(err, ota.ErrTimeoutRange) {
			t.Fatal(err)
		}
		mustJSON(t, sent, `{"url":"http://h/fw.zip","commit_timeout":2147483,"timeout":2147483}`)
	})
}
