package ota_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/device/emulator"
	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/ota/wire"
	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/all"
	"github.com/otactl/otactl/pkg/transport/pipe"
)

// updaterDevice starts a real emulator on the real clock, reached through
// the in-process pipe, and writes a bundle of version with behavior to a
// file.
func updaterDevice(t *testing.T, version, behavior string) (ota.Dialer, *emulator.Device, string) {
	t.Helper()
	d, err := emulator.New(emulator.Config{StateDir: t.TempDir(), RebootAfter: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	data, _ := emuBundle(t, version, behavior)
	dial := func(ctx context.Context) (*rpc.Client, error) {
		return rpc.NewClient(pipe.New(d.Handler()), rpc.ClientOptions{}), nil
	}
	return dial, d, bundleFile(t, data)
}

// bundleFile writes data to a fw.zip of the test's own and returns its path.
func bundleFile(t *testing.T, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fw.zip")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// dialPort dials port (a --port address) through the transports' registry.
func dialPort(port string) ota.Dialer {
	return func(ctx context.Context) (*rpc.Client, error) {
		conn, err := all.NewRegistry().Dial(ctx, port, transport.Options{})
		if err != nil {
			return nil, err
		}
		return rpc.NewClient(conn, rpc.ClientOptions{}), nil
	}
}

// phasesOf lists the phases of a report, in order.
func phasesOf(rep *ota.Report) []ota.Phase {
	var ps []ota.Phase
	for _, p := range rep.Phases {
		ps = append(ps, p.Phase)
	}
	return ps
}

// A whole update by the Updater on the real emulator, pushed and served:
// the report says what ran before and after, the verdict with its reason
// and exit code, and how long each phase took; events come one at a time,
// each with its phase.
func TestUpdaterReportsAWholeUpdate(t *testing.T) {
	for _, tc := range []struct {
		name         string
		push         bool
		healthMethod string
	}{{"pushed", true, ""}, {"served", false, ""}, {"served, health checked", false, wire.AppHealth}} {
		push := tc.push
		t.Run(tc.name, func(t *testing.T) {
			dial, d, path := updaterDevice(t, "2.0.0", "")
			var mu sync.Mutex
			inside, overlap := false, false
			phases := map[ota.Phase]int{}
			u := ota.Updater{Dial: dial, Address: "pipe://dev1", File: path, Push: push, ServeAddr: "127.0.0.1:0",
				Commit: true, CommitTimeout: time.Minute, RebootTimeout: 20 * time.Second,
				Health: ota.HealthOptions{Method: tc.healthMethod, Grace: 5 * time.Second},
				OnEvent: func(ev ota.Event) {
					mu.Lock()
					if inside {
						overlap = true
					}
					inside = true
					phases[ev.Phase]++
					mu.Unlock()
					time.Sleep(time.Millisecond)
					mu.Lock()
					inside = false
					mu.Unlock()
				}}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			rep := u.Run(ctx)
			if !rep.OK() || rep.Result != ota.UpdatedCommitted || rep.Reason != ota.ReasonOK || rep.ExitCode() != 0 {
				t.Fatalf("report %+v, err %v", rep, rep.Err)
			}
			wantSource := ota.SourceServed
			if push {
				wantSource = ota.SourcePushed
			}
			if rep.Source != wantSource || rep.Device != "pipe://dev1" || !rep.Sent || !rep.Committed {
				t.Fatalf("report %+v", rep)
			}
			if rep.Before == nil || rep.Before.Boot.ActiveSlot != 0 || rep.Before.Info.FWVersion != emulator.DefaultFactoryVersion {
				t.Fatalf("before %+v", rep.Before)
			}
			if rep.After == nil || rep.After.ActiveSlot != 1 || !rep.After.IsCommitted || rep.Running.Version != "2.0.0" ||
				rep.Attempted == nil || rep.Attempted.Version != "2.0.0" || !rep.CommitDeadline.IsZero() {
				t.Fatalf("after %+v, running %+v, attempted %+v, deadline %v", rep.After, rep.Running, rep.Attempted, rep.CommitDeadline)
			}
			if push != (rep.Transfer != nil) || (push && rep.Transfer.Bytes == 0) {
				t.Fatalf("transfer %+v", rep.Transfer)
			}
			want := []ota.Phase{ota.PhaseCheck, ota.PhaseTransfer, ota.PhaseReboot, ota.PhaseCommit}
			if tc.healthMethod != "" {
				want = []ota.Phase{ota.PhaseCheck, ota.PhaseTransfer, ota.PhaseReboot, ota.PhaseHealth, ota.PhaseCommit}
				if rep.HealthChecks < 1 {
					t.Fatalf("health checks %d", rep.HealthChecks)
				}
			}
			if got := phasesOf(rep); !slices.Equal(got, want) {
				t.Fatalf("phases %v, want %v", got, want)
			}
			if rep.Elapsed <= 0 || rep.PhaseDuration(ota.PhaseTransfer) <= 0 {
				t.Fatalf("elapsed %v, transfer %v", rep.Elapsed, rep.PhaseDuration(ota.PhaseTransfer))
			}
			mu.Lock()
			defer mu.Unlock()
			if overlap || phases[ota.PhaseTransfer] == 0 || phases[ota.PhaseReboot] == 0 || phases[""] != 0 {
				t.Fatalf("events per phase %v, overlapping %v", phases, overlap)
			}
			if s := d.State(); s.Boot.ActiveSlot != 1 || !s.Boot.IsCommitted {
				t.Fatalf("device %+v", s)
			}
		})
	}
}

// A firmware that crashes at boot: the device rolls back by itself, and
// the report says so as a verdict read from the device (exit 6), with the
// old firmware running.
func TestUpdaterReportsARollback(t *testing.T) {
	dial, _, path := updaterDevice(t, "2.0.0", emulator.BehaviorCrashOnBoot)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep := ota.Updater{Dial: dial, File: path, Push: true, Commit: true, RebootTimeout: 20 * time.Second}.Run(ctx)
	if rep.OK() || rep.Result != ota.RolledBack || rep.Reason != ota.ReasonRolledBack || rep.ExitCode() != ota.ExitUpdate ||
		!rep.Observed || !errors.Is(rep.Err, ota.ErrUpdateFailed) {
		t.Fatalf("report %+v, err %v", rep, rep.Err)
	}
	if rep.Running.Version != emulator.DefaultFactoryVersion || rep.After == nil || rep.After.ActiveSlot != 0 || !rep.After.IsCommitted {
		t.Fatalf("running %+v, after %+v", rep.Running, rep.After)
	}
}

// What the device would refuse is refused before anything is sent: a
// device on uncommitted firmware (exit 6, not applied, nothing sent) and a
// bundle that does not exist (a usage error, exit 2, the device not even
// dialled).
func TestUpdaterRefusesBeforeSending(t *testing.T) {
	dial, d, path := updaterDevice(t, "2.0.0", "")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, _ := dial(ctx)
	f := false
	if err := ota.New(c).SetBootState(ctx, ota.BootStateChange{IsCommitted: &f}); err != nil {
		t.Fatal(err)
	}
	c.Close()
	rep := ota.Updater{Dial: dial, File: path, Push: true}.Run(ctx)
	if rep.Result != ota.NotApplied || rep.Reason != ota.ReasonUncommitted || rep.ExitCode() != ota.ExitUpdate || rep.Sent || rep.Before == nil {
		t.Fatalf("report %+v, err %v", rep, rep.Err)
	}
	if s := d.State(); s.Boot.ActiveSlot != 0 || s.OTAState != 0 {
		t.Fatalf("the device was changed: %+v", s)
	}
	dialled := false
	rep = ota.Updater{Dial: func(ctx context.Context) (*rpc.Client, error) { dialled = true; return dial(ctx) },
		File: filepath.Join(t.TempDir(), "missing.zip")}.Run(ctx)
	if rep.Reason != ota.ReasonUsage || rep.ExitCode() != ota.ExitUsage || rep.Result != ota.NotApplied || dialled {
		t.Fatalf("report %+v, err %v, dialled %v", rep, rep.Err, dialled)
	}
}

// A device that already runs the firmware on trial is committed by
// CommitTrial without anything being sent again (a rollout run again after
// an interruption finishes it this way).
func TestUpdaterCommitTrial(t *testing.T) {
	dial, d, path := updaterDevice(t, "2.0.0", "")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	u := ota.Updater{Dial: dial, File: path, Push: true, CommitTimeout: time.Minute, RebootTimeout: 20 * time.Second}
	if rep := u.Run(ctx); rep.Result != ota.UpdatedUncommitted || rep.CommitDeadline.IsZero() {
		t.Fatalf("first run: %+v, %v", rep, rep.Err)
	}
	boots := d.State().Boots
	c, _ := dial(ctx)
	obs, err := ota.New(c).Observe(ctx)
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	u.Commit = true
	rep := u.CommitTrial(ctx, obs.Info, obs.Boot, obs.At)
	if !rep.OK() || rep.Result != ota.UpdatedCommitted || !rep.Committed || rep.Sent || rep.Transfer != nil ||
		!strings.HasPrefix(rep.Message, "it already ran the build on trial (nothing sent): ") {
		t.Fatalf("report %+v, err %v", rep, rep.Err)
	}
	if got := phasesOf(rep); !slices.Equal(got, []ota.Phase{ota.PhaseCommit}) {
		t.Fatalf("phases %v", got)
	}
	if s := d.State(); s.Boots != boots || s.Boot.ActiveSlot != 1 || !s.Boot.IsCommitted || s.Version != "2.0.0" {
		t.Fatalf("device %+v (booted %d times before)", s, boots)
	}
}
