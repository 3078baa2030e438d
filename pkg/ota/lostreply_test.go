package ota_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/device/emulator"
	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/ota/wire"
	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/transport/pipe"
)

// The device did what OTA.Update asked but its reply was lost on the way
// (emulator Hooks.DropReply), over a link that stays up (the pipe: like
// MQTT, whose client stays connected to its broker while the device
// reboots). otactl must not wait for that reply for UpdateTimeout (10 min
// here): OTA.Status, polled meanwhile, shows the update over, and the
// verdict is what the device did — read from it — within seconds. The
// run's ctx (1 min) is far below UpdateTimeout: a blind wait fails it.
func TestUpdaterURLUpdateWithItsReplyLost(t *testing.T) {
	for _, tc := range []struct {
		name   string
		failDL bool // the download fails on the device (HTTP 404)
		want   ota.Result
		reason ota.Reason
	}{
		{name: "installed and rebooted", want: ota.UpdatedCommitted, reason: ota.ReasonOK},
		{name: "download failed", failDL: true, want: ota.NotApplied, reason: ota.ReasonDownloadFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var dropped sync.WaitGroup
			dropped.Add(1)
			var once sync.Once
			d, err := emulator.New(emulator.Config{StateDir: t.TempDir(), RebootAfter: 20 * time.Millisecond,
				Hooks: emulator.Hooks{DropReply: func(method string) bool {
					if method != wire.OTAUpdate {
						return false
					}
					once.Do(dropped.Done)
					return true
				}}})
			if err != nil {
				t.Fatal(err)
			}
			if err := d.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.Close() })
			data, fw := emuBundle(t, "2.0.0", "")
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tc.failDL {
					http.NotFound(w, r)
					return
				}
				w.Write(data)
			}))
			t.Cleanup(srv.Close)
			path := filepath.Join(t.TempDir(), "fw.zip")
			if err := os.WriteFile(path, data, 0o644); err != nil {
				t.Fatal(err)
			}
			dial := func(ctx context.Context) (*rpc.Client, error) {
				return rpc.NewClient(pipe.New(d.Handler()), rpc.ClientOptions{}), nil
			}
			var mu sync.Mutex
			var noReply []string
			u := ota.Updater{Dial: dial, Address: "pipe://dev1", URL: srv.URL + "/fw.zip", Commit: true,
				UpdateTimeout: 10 * time.Minute, RebootTimeout: 20 * time.Second,
				OnEvent: func(ev ota.Event) {
					if ev.Kind == ota.EventNoReply {
						mu.Lock()
						noReply = append(noReply, ev.Msg)
						mu.Unlock()
					}
				}}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			rep := u.Run(ctx)
			dropped.Wait() // the reply was indeed dropped
			if rep.Result != tc.want || rep.Reason != tc.reason {
				t.Fatalf("result %s (%s), want %s (%s): %v", rep.Result, rep.Reason, tc.want, tc.reason, rep.Err)
			}
			// The probe decided: OTA.Status showed the update over.
			mu.Lock()
			defer mu.Unlock()
			if tc.failDL {
				if len(noReply) != 0 || rep.Err == nil || !strings.Contains(rep.Err.Error(), "OTA.Status") || !strings.Contains(rep.Err.Error(), "was lost") {
					t.Fatalf("no-reply events %q, err %v: want the failure read from OTA.Status", noReply, rep.Err)
				}
			} else if len(noReply) != 1 || !strings.Contains(noReply[0], "OTA.Status") {
				t.Fatalf("no-reply events %q: want one, from the OTA.Status probe", noReply)
			}
			s := d.State()
			switch tc.want {
			case ota.UpdatedCommitted:
				if s.Version != fw.Version || !s.Boot.IsCommitted || s.Boot.ActiveSlot != 1 {
					t.Fatalf("device %+v", s)
				}
			default:
				if s.Version != emulator.DefaultFactoryVersion || s.Boot.ActiveSlot != 0 || s.Boots != 1 {
					t.Fatalf("device %+v", s)
				}
			}
		})
	}
}
