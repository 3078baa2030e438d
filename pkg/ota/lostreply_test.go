package ota_test

import (
	"context"
	"net/http"
	"net/http/httptest"
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
			// The probe decided: OTA.Status showed the update failed, or
			// Sys.GetInfo a reboot (here: into the new firmware).
			mu.Lock()
			defer mu.Unlock()
			if tc.failDL {
				if len(noReply) != 0 || rep.Err == nil || !strings.Contains(rep.Err.Error(), "OTA.Status") || !strings.Contains(rep.Err.Error(), "was lost") {
					t.Fatalf("no-reply events %q, err %v: want the failure read from OTA.Status", noReply, rep.Err)
				}
			} else if len(noReply) != 1 || !strings.Contains(noReply[0], "the reply was lost") {
				t.Fatalf("no-reply events %q: want one, from the probe", noReply)
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

// A real device shows OTA.Status idle while it resolves, connects and
// handshakes to the bundle server (no progress before data arrives), and
// keeps an earlier update's failure (state failed, its message) until the
// next update starts. Neither is evidence that THIS update is over: here
// the bundle server takes 10 s (twice replyGrace, synctest's clock) to
// answer, then the download runs and the update finishes. otactl must
// report what the device did: its reply when it comes, or — reply lost —
// the finished update handed to the outcome wait; never an early hand-over
// or an earlier update's failure.
func TestUpdateSlowToStartIsNotALostReply(t *testing.T) {
	leftover := ota.Status{State: ota.StateError, Msg: wire.InvalidHTTPResponse(404), ProgressPercent: 3}
	for _, tc := range []struct {
		name      string
		before    ota.Status
		loseReply bool // the reply to OTA.Update is lost; the device reboots into the new firmware
	}{
		{name: "idle/reply", before: ota.Status{State: ota.StateIdle}},
		{name: "leftover failure/reply", before: leftover},
		{name: "idle/reply lost", before: ota.Status{State: ota.StateIdle}, loseReply: true},
		{name: "leftover failure/reply lost", before: leftover, loseReply: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bubble(t, func(t *testing.T, ctx context.Context) {
				d := newFakeDev(t)
				d.status = tc.before
				set := func(st ota.Status) {
					d.mu.Lock()
					d.status = st
					d.mu.Unlock()
				}
				d.srv.Handle(wire.OTAUpdate, func(ctx context.Context, _ *rpc.Request) (any, error) {
					time.Sleep(10 * time.Second) // connecting: the status unchanged
					for p := 10; p <= 90; p += 40 {
						set(ota.Status{State: ota.StateProgress, ProgressPercent: p})
						time.Sleep(2 * time.Second)
					}
					set(ota.Status{State: ota.StateSuccess, Msg: "Update applied, finalizing", ProgressPercent: 100})
					if !tc.loseReply {
						return nil, nil
					}
					time.Sleep(2 * time.Second) // finalizing, then rebooting
					d.mu.Lock()
					d.fw, d.bootedAt, d.status = d.newFW, time.Now(), ota.Status{}
					d.boot = ota.BootState{ActiveSlot: 1, RevertSlot: 0, CommitTimeout: 300}
					d.mu.Unlock()
					<-ctx.Done() // the reply is lost: none comes
					return nil, ctx.Err()
				})
				ev := &events{}
				cctx, cancel := context.WithTimeout(ctx, time.Minute)
				defer cancel()
				start := time.Now()
				acc, err := ota.New(d.client(t)).Update(cctx, ota.UpdateArgs{URL: "http://x/fw.zip", CommitTimeout: 300 * time.Second, OnEvent: ev.fn})
				took := time.Since(start)
				if err != nil {
					t.Fatalf("after %v: %v", took, err)
				}
				if tc.loseReply {
					// Handed over on evidence (the status showed the update
					// finished; the device rebooted), within seconds.
					if acc.Confirmed || !acc.Finished || took >= 30*time.Second || ev.count(ota.EventNoReply) != 1 {
						t.Fatalf("%+v after %v, events %v: want the finished update handed over unconfirmed", acc, took, ev.kinds())
					}
					return
				}
				if !acc.Confirmed || ev.count(ota.EventNoReply) != 0 {
					t.Fatalf("%+v after %v, events %v: want the device's reply", acc, took, ev.kinds())
				}
				if took < 14*time.Second {
					t.Fatalf("returned after %v, before the device replied", took)
				}
			})
		})
	}
}
