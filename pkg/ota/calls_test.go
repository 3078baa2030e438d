package ota_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/rpc"
)

func TestBootStateCalls(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		d.boot = ota.BootState{ActiveSlot: 1, RevertSlot: 0, IsCommitted: false, CommitTimeout: 300}
		var set []string
		d.srv.Handle("OTA.SetBootState", func(_ context.Context, r *rpc.Request) (any, error) {
			set = append(set, string(r.Params))
			return nil, nil
		})
		dev := ota.New(d.client(t))
		bs, err := dev.GetBootState(ctx)
		if err != nil || bs != d.boot {
			t.Fatalf("GetBootState = %+v, %v", bs, err)
		}
		if err := dev.SetBootState(ctx, ota.BootStateChange{CommitTimeout: new(60)}); err != nil {
			t.Fatal(err)
		}
		if err := dev.SetBootState(ctx, ota.BootStateChange{ActiveSlot: new(0), IsCommitted: new(false)}); err != nil {
			t.Fatal(err)
		}
		if err := dev.SetBootState(ctx, ota.BootStateChange{}); err == nil {
			t.Fatal("an empty change was sent")
		}
		if len(set) != 2 {
			t.Fatalf("SetBootState calls %q", set)
		}
		mustJSON(t, set[0], `{"commit_timeout":60}`)
		mustJSON(t, set[1], `{"active_slot":0,"is_committed":false}`)
	})
}

func TestCommitRevertRefusedWhenCommitted(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		committed := true
		for _, m := range []string{"OTA.Commit", "OTA.Revert"} {
			d.srv.Handle(m, func(context.Context, *rpc.Request) (any, error) {
				if committed {
					return nil, &rpc.Error{Code: -1}
				}
				return nil, nil
			})
		}
		dev := ota.New(d.client(t))
		for name, fn := range map[string]func(context.Context) error{"commit": dev.Commit, "revert": dev.Revert} {
			err := fn(ctx)
			var re *rpc.Error
			if !errors.Is(err, ota.ErrAlreadyCommitted) || !errors.As(err, &re) || re.Code != -1 {
				t.Fatalf("%s: err = %v", name, err)
			}
		}
		committed = false
		if err := dev.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		if err := dev.Revert(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

func TestCreateSnapshotStatusInfoReboot(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		var snap []string
		d.srv.Handle("OTA.CreateSnapshot", func(_ context.Context, r *rpc.Request) (any, error) {
			snap = append(snap, string(r.Params))
			return map[string]int{"slot": 1}, nil
		})
		var reboot string
		d.srv.Handle("Sys.Reboot", func(_ context.Context, r *rpc.Request) (any, error) {
			reboot = string(r.Params)
			return nil, nil
		})
		dev := ota.New(d.client(t))
		slot, err := dev.CreateSnapshot(ctx, true, 30)
		if err != nil || slot != 1 {
			t.Fatalf("CreateSnapshot = %d, %v", slot, err)
		}
		if _, err := dev.CreateSnapshot(ctx, false, -1); err != nil {
			t.Fatal(err)
		}
		mustJSON(t, snap[0], `{"set_as_revert":true,"commit_timeout":30}`)
		mustJSON(t, snap[1], `{"set_as_revert":false}`)

		d.status = ota.Status{State: ota.StateError, Msg: "Digest mismatch", ProgressPercent: 80}
		st, err := dev.Status(ctx)
		if err != nil || st.State != ota.StateError || st.Msg != "Digest mismatch" || st.ProgressPercent != 80 || !st.IsCommitted || len(st.Raw) == 0 {
			t.Fatalf("Status = %+v, %v", st, err)
		}
		if st.State.String() != "last update failed" {
			t.Fatalf("state string %q", st.State)
		}

		time.Sleep(90 * time.Second)
		info, err := dev.GetInfo(ctx)
		if err != nil || info.ID != "esp32_0A1B2C" || info.FWVersion != "1.0" || info.FWID != d.fw.BuildID ||
			info.Arch != "esp32" || info.App != "demo" || info.Uptime != 90 || !strings.Contains(string(info.Raw), `"mac"`) {
			t.Fatalf("GetInfo = %+v, %v", info, err)
		}

		if err := dev.Reboot(ctx, 250*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		mustJSON(t, reboot, `{"delay_ms":250}`)
	})
}

func TestUpdate(t *testing.T) {
	const url = "http://192.168.1.10:8080/fw.zip"
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		var params string
		d.srv.Handle("OTA.Update", func(_ context.Context, r *rpc.Request) (any, error) {
			params = string(r.Params)
			// Download for 10 s, reporting progress, then the legacy reply.
			for i := range 10 {
				d.mu.Lock()
				d.status = ota.Status{State: ota.StateProgress, ProgressPercent: i * 11}
				d.mu.Unlock()
				time.Sleep(time.Second)
			}
			d.mu.Lock()
			d.status = ota.Status{State: ota.StateProgress, ProgressPercent: 100}
			d.mu.Unlock()
			time.Sleep(1500 * time.Millisecond)
			return nil, &rpc.Error{Code: 0, Message: "Update applied, finalizing"}
		})
		dev := ota.New(d.client(t))
		ev := &events{}
		acc, err := dev.Update(ctx, ota.UpdateArgs{URL: url, CommitTimeout: 120 * time.Second, OnEvent: ev.fn})
		if err != nil || !acc.Confirmed {
			t.Fatalf("Update = %+v, %v", acc, err)
		}
		mustJSON(t, params, `{"url":"`+url+`","commit_timeout":120,"timeout":600}`)
		var pct []int
		for _, e := range ev.ev {
			if e.Kind == ota.EventDownload {
				pct = append(pct, e.Percent)
			}
		}
		if len(pct) < 5 || pct[len(pct)-1] != 100 {
			t.Fatalf("progress %v", pct)
		}
		for i, p := range pct[:len(pct)-1] {
			if p >= 100 || (i > 0 && p <= pct[i-1]) {
				t.Fatalf("progress %v: 100%% before the reply, or not increasing", pct)
			}
		}
		if k := ev.kinds(); k[len(k)-1] != ota.EventAccepted {
			t.Fatalf("events %v", k)
		}
	})
}

func TestUpdateRefused(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		d.boot = ota.BootState{ActiveSlot: 1, IsCommitted: false, CommitTimeout: 300}
		d.srv.Handle("OTA.Update", func(context.Context, *rpc.Request) (any, error) {
			return nil, rpc.Errorf(-1, "Failed to init updater")
		})
		dev := ota.New(d.client(t))
		_, err := dev.Update(ctx, ota.UpdateArgs{URL: "http://x/fw.zip"})
		var re *rpc.Error
		if !errors.Is(err, ota.ErrUpdateFailed) || !errors.As(err, &re) || re.Code != -1 {
			t.Fatalf("err = %v", err)
		}
		contains(t, err, "Failed to init updater", "otactl commit")
		if _, err := dev.Update(ctx, ota.UpdateArgs{}); err == nil {
			t.Fatal("no URL accepted")
		}
	})
}

// The reply to OTA.Update can be lost when the device reboots: not an
// error, but not confirmed.
func TestUpdateReplyLost(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		d.srv.Handle("OTA.Update", func(ctx context.Context, _ *rpc.Request) (any, error) {
			d.mu.Lock()
			conn := d.conns[len(d.conns)-1]
			d.mu.Unlock()
			time.Sleep(3 * time.Second)
			go conn.Close()
			<-ctx.Done()
			return nil, ctx.Err()
		})
		dev := ota.New(d.client(t))
		ev := &events{}
		acc, err := dev.Update(ctx, ota.UpdateArgs{URL: "http://x/fw.zip", OnEvent: ev.fn})
		if err != nil || acc.Confirmed || ev.count(ota.EventNoReply) != 1 {
			t.Fatalf("Update = %+v, %v, events %v", acc, err, ev.kinds())
		}
		// Cancelled by the user: an error, not "probably rebooting".
		d2 := newFakeDev(t)
		d2.srv.Handle("OTA.Update", func(ctx context.Context, _ *rpc.Request) (any, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		})
		cctx, cancel := context.WithCancel(ctx)
		go func() { time.Sleep(time.Second); cancel() }()
		_, err = ota.New(d2.client(t)).Update(cctx, ota.UpdateArgs{URL: "http://x/fw.zip"})
		if !errors.Is(err, context.Canceled) || errors.Is(err, ota.ErrUpdateFailed) {
			t.Fatalf("err = %v", err)
		}
		// Not "did not install": nothing says so; the device carries on.
		contains(t, err, "may still be downloading")
	})
}

// When otactl gives up waiting for OTA.Update's reply (its deadline), it
// reads OTA.Status once more and says what the device still does and what
// ends it; a failed or finished update there is a verdict.
func TestUpdateGivesUpSayingWhatTheDeviceDoes(t *testing.T) {
	for _, tc := range []struct {
		status ota.Status  // before OTA.Update is sent, and while it runs
		during *ota.Status // if set, OTA.Status once OTA.Update arrived
		over   bool        // otactl ends the wait before its deadline
		check  func(t *testing.T, acc ota.Accepted, err error)
	}{
		{status: ota.Status{State: ota.StateProgress, ProgressPercent: 37}, check: func(t *testing.T, acc ota.Accepted, err error) {
			var ge *ota.GaveUpError
			if !errors.As(err, &ge) || !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ota.ErrUpdateFailed) || ota.ReasonOf(err) != ota.ReasonTimeout {
				t.Fatalf("err = %v", err)
			}
			contains(t, err, "no reply to OTA.Update within 1m0s", "still updating (OTA.Status: in progress, 37%)",
				"update watchdog (--update-timeout 50s, counted from the start of the update) should have ended it 10s ago", "a reboot ends it")
		}},
		// Idle all along while OTA.Update is outstanding, the device not
		// rebooting: it may still be connecting to the bundle server (a
		// real device shows no progress before data arrives), so that is
		// no evidence the update is over: otactl waits to its deadline and
		// says what the device shows.
		{status: ota.Status{State: ota.StateIdle}, check: func(t *testing.T, acc ota.Accepted, err error) {
			var ge *ota.GaveUpError
			if !errors.As(err, &ge) || errors.Is(err, ota.ErrUpdateFailed) || acc.Confirmed {
				t.Fatalf("%+v, %v: want a GaveUpError", acc, err)
			}
			contains(t, err, "OTA.Status says idle", "has not started downloading yet", "'otactl bootstate'")
		}},
		// An earlier update's failure, still shown, unchanged: not this
		// update's verdict.
		{status: ota.Status{State: ota.StateError, Msg: "Update timed out"}, check: func(t *testing.T, acc ota.Accepted, err error) {
			var ge *ota.GaveUpError
			if !errors.As(err, &ge) || !ge.Leftover || errors.Is(err, ota.ErrUpdateFailed) {
				t.Fatalf("%+v, %v: want a GaveUpError naming the leftover failure", acc, err)
			}
			contains(t, err, "still shows the failure it showed before this update was sent (Update timed out", "whether this update started is unknown")
		}},
		// A failure that appears while OTA.Update is outstanding is this
		// update's: the verdict, within seconds.
		{status: ota.Status{State: ota.StateIdle}, during: &ota.Status{State: ota.StateError, Msg: "Update timed out"}, over: true, check: func(t *testing.T, acc ota.Accepted, err error) {
			if !errors.Is(err, ota.ErrUpdateFailed) || ota.ReasonOf(err) != ota.ReasonUpdateTimeout {
				t.Fatalf("err = %v (%s)", err, ota.ReasonOf(err))
			}
			contains(t, err, "the update failed on the device: Update timed out", "boot state is unchanged")
		}},
		{status: ota.Status{State: ota.StateError, Msg: "Update timed out"}, during: &ota.Status{State: ota.StateError, Msg: "Invalid HTTP response code 404"}, over: true, check: func(t *testing.T, acc ota.Accepted, err error) {
			if !errors.Is(err, ota.ErrUpdateFailed) || ota.ReasonOf(err) != ota.ReasonDownloadFailed {
				t.Fatalf("err = %v (%s)", err, ota.ReasonOf(err))
			}
			contains(t, err, "the update failed on the device: Invalid HTTP response code 404")
		}},
		{status: ota.Status{State: ota.StateSuccess}, check: func(t *testing.T, acc ota.Accepted, err error) {
			if err != nil || acc.Confirmed {
				t.Fatalf("%+v, %v: a finished update goes on to the outcome", acc, err)
			}
		}},
	} {
		bubble(t, func(t *testing.T, ctx context.Context) {
			d := newFakeDev(t)
			d.status = tc.status
			d.srv.Handle("OTA.Update", func(ctx context.Context, _ *rpc.Request) (any, error) {
				if tc.during != nil {
					d.mu.Lock()
					d.status = *tc.during
					d.mu.Unlock()
				}
				<-ctx.Done()
				return nil, ctx.Err()
			})
			cctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			start := time.Now()
			acc, err := ota.New(d.client(t)).Update(cctx, ota.UpdateArgs{URL: "http://x/fw.zip", Timeout: 50 * time.Second})
			// (synctest's clock: no timing flake.) Only a failure of this
			// update ends the wait before otactl's deadline.
			if took := time.Since(start); (took < time.Minute) != tc.over {
				t.Errorf("status %s: Update took %v", tc.status.State, took)
			}
			tc.check(t, acc, err)
		})
	}
}

func TestTypesJSON(t *testing.T) {
	var bs ota.BootState
	if err := json.Unmarshal([]byte(`{"active_slot":1,"is_committed":false,"revert_slot":0,"commit_timeout":300}`), &bs); err != nil ||
		bs != (ota.BootState{ActiveSlot: 1, RevertSlot: 0, IsCommitted: false, CommitTimeout: 300}) {
		t.Fatalf("%+v %v", bs, err)
	}
	o := ota.Outcome{Result: ota.UpdatedCommitted}
	b, _ := json.Marshal(o)
	if !strings.Contains(string(b), `"result":"updated_committed"`) || strings.Contains(string(b), "commit_deadline") {
		t.Fatalf("outcome JSON %s", b)
	}
	if (ota.Firmware{}).Matches(ota.Firmware{Version: "1"}) || !(ota.Firmware{Version: "1"}).Matches(ota.Firmware{Version: "1", BuildID: "x"}) ||
		(ota.Firmware{Version: "1", BuildID: "y"}).Matches(ota.Firmware{Version: "1", BuildID: "x"}) {
		t.Fatal("Firmware.Matches")
	}
}

// A reply to OTA.Update that never comes (dropped on the way, or cut off
// by the reboot) does not hold otactl for the whole update timeout: once
// OTA.Status shows the update over for a few seconds, the call ends as a
// lost reply and the outcome wait takes over.
func TestUpdateReplyLostSeenThroughStatus(t *testing.T) {
	for _, away := range []bool{false, true} {
		bubble(t, func(t *testing.T, ctx context.Context) {
			d := newFakeDev(t)
			d.srv.Handle("OTA.Update", func(ctx context.Context, _ *rpc.Request) (any, error) {
				d.mu.Lock()
				d.status = ota.Status{State: ota.StateProgress, ProgressPercent: 50}
				d.mu.Unlock()
				time.Sleep(3 * time.Second)
				d.mu.Lock()
				if away {
					d.status = ota.Status{State: ota.StateSuccess}
				}
				d.bootedAt = time.Now()
				d.mu.Unlock()
				if away { // the reboot: OTA.Status unanswered for a while, then idle
					d.srv.Handle("OTA.Status", func(ctx context.Context, _ *rpc.Request) (any, error) {
						<-ctx.Done()
						return nil, ctx.Err()
					})
					time.Sleep(4 * time.Second)
					d.srv.Handle("OTA.Status", func(context.Context, *rpc.Request) (any, error) { return map[string]any{"state": 0}, nil })
				} else {
					d.mu.Lock()
					d.status = ota.Status{State: ota.StateIdle}
					d.mu.Unlock()
				}
				<-ctx.Done() // the reply never comes
				return nil, ctx.Err()
			})
			ev := &events{}
			start := time.Now()
			acc, err := ota.New(d.client(t)).Update(ctx, ota.UpdateArgs{URL: "http://x/fw.zip", OnEvent: ev.fn})
			if err != nil || acc.Confirmed || ev.count(ota.EventNoReply) != 1 || time.Since(start) > 30*time.Second {
				t.Fatalf("away=%v: %+v, %v after %v, events %v", away, acc, err, time.Since(start), ev.kinds())
			}
		})
	}
	// A failed update returns the updater to idle as it replies: its error
	// reply still wins.
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		d.srv.Handle("OTA.Update", func(context.Context, *rpc.Request) (any, error) {
			d.mu.Lock()
			d.status = ota.Status{State: ota.StateProgress}
			d.mu.Unlock()
			time.Sleep(3 * time.Second)
			d.mu.Lock()
			d.status = ota.Status{State: ota.StateIdle}
			d.mu.Unlock()
			time.Sleep(2 * time.Second) // a slow link
			return nil, rpc.Errorf(-1, "Invalid CRC")
		})
		_, err := ota.New(d.client(t)).Update(ctx, ota.UpdateArgs{URL: "http://x/fw.zip", OnEvent: (&events{}).fn})
		if !errors.Is(err, ota.ErrUpdateFailed) || ota.ReasonOf(err) != ota.ReasonCorruptBundle {
			t.Fatalf("err = %v", err)
		}
	})
}
