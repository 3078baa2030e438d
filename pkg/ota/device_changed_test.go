package ota_test

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/device/emulator"
	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/ota/wire"
	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
)

// switchProxy is a loopback TCP proxy whose backend can be changed: an
// address that, from one moment on, reaches another device (a DHCP lease
// given to another board, a port forward repointed). Switching closes the
// connections open to the old backend, as the old device's reset does.
type switchProxy struct {
	ln      net.Listener
	mu      sync.Mutex
	backend string
	conns   []net.Conn
	wg      sync.WaitGroup
}

func startSwitchProxy(t *testing.T, backend string) *switchProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &switchProxy{ln: ln, backend: backend}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		ln.Close()
		p.closeConns()
		p.wg.Wait()
	})
	return p
}

func (p *switchProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		b, err := net.Dial("tcp", p.backend)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns = append(p.conns, c, b)
		p.mu.Unlock()
		p.wg.Add(2)
		go func() { defer p.wg.Done(); io.Copy(b, c); b.Close() }()
		go func() { defer p.wg.Done(); io.Copy(c, b); c.Close() }()
	}
}

func (p *switchProxy) closeConns() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// switchTo makes the proxy's address reach backend from now on.
func (p *switchProxy) switchTo(backend string) {
	p.mu.Lock()
	p.backend = backend
	p.mu.Unlock()
	p.closeConns()
}

// callLog records the methods a device was called with.
type callLog struct {
	mu      sync.Mutex
	methods []string
}

func (l *callLog) add(m string) {
	l.mu.Lock()
	l.methods = append(l.methods, m)
	l.mu.Unlock()
}

func (l *callLog) list() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.methods)
}

// loggedListener is the emulator's HTTP listener, recording every method
// the device is called with.
type loggedListener struct {
	emulator.Listener
	log *callLog
}

func (l loggedListener) Start(ctx context.Context, h transport.Handler) error {
	return l.Listener.Start(ctx, transport.HandlerFunc(func(ctx context.Context, f *frame.Frame) *frame.Frame {
		l.log.add(f.Method)
		return h.HandleFrame(ctx, f)
	}))
}

// httpDevice starts an emulator with id on an HTTP listener; it returns
// the device, its host:port and the log of its calls.
func httpDevice(t *testing.T, id string) (*emulator.Device, string, *callLog) {
	t.Helper()
	log := &callLog{}
	l := loggedListener{emulator.NewHTTPListener("127.0.0.1:0", nil), log}
	d, err := emulator.New(emulator.Config{StateDir: filepath.Join(t.TempDir(), id), ID: id,
		RebootAfter: 20 * time.Millisecond, Listeners: []emulator.Listener{l}})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	for _, li := range d.Listeners() {
		if li.Transport == "http" {
			return d, hostPort(t, li.Addr), log
		}
	}
	t.Fatal("the emulator has no HTTP listener")
	return nil, "", nil
}

func hostPort(t *testing.T, addr string) string {
	t.Helper()
	s := strings.TrimPrefix(addr, "http://")
	if i := strings.IndexByte(s, '/'); i >= 0 {
		s = s[:i]
	}
	return s
}

// readOnly are the calls that change nothing on a device (a health
// method only reads, too).
var readOnly = []string{wire.SysGetInfo, wire.OTAStatus, wire.OTAGetBootState, wire.AppHealth}

// After a device's reset, the address otactl updates it at reaches
// another device: otactl must notice by the other device's id, send it
// nothing that changes its state (no OTA.Write, OTA.End, OTA.Commit,
// OTA.Revert), and end with device_changed (exit 5) naming both devices —
// not take the other device's answers as the first one's (device_reset,
// rolled_back, or a commit of the wrong device).
func TestUpdaterNoticesAnotherDeviceAtTheAddress(t *testing.T) {
	for _, tc := range []struct {
		name   string
		push   bool
		health string // the health method, if any
		// switchOn tells the moment the address starts reaching device B.
		switchOn   func(ev ota.Event, size int64) bool
		wantResult ota.Result
		// aAfter checks device A once the run ended.
		aAfter func(t *testing.T, s emulator.State)
	}{
		{
			name: "push resumed after a reset", push: true,
			switchOn:   func(ev ota.Event, size int64) bool { return ev.Kind == ota.EventSent && ev.Sent >= size/3 },
			wantResult: ota.NotApplied,
		},
		{
			name:       "outcome wait after the reboot",
			switchOn:   func(ev ota.Event, _ int64) bool { return ev.Kind == ota.EventPhase && ev.Phase == ota.PhaseReboot },
			wantResult: ota.Unknown,
			aAfter: func(t *testing.T, s emulator.State) {
				if s.Version != "2.0.0" || s.Boot.IsCommitted {
					t.Errorf("device A: %+v, want 2.0.0 on trial, not committed", s)
				}
			},
		},
		{
			name:       "commit after the health check",
			health:     wire.AppHealth,
			switchOn:   func(ev ota.Event, _ int64) bool { return ev.Kind == ota.EventHealthCheck },
			wantResult: ota.Unknown,
			aAfter: func(t *testing.T, s emulator.State) {
				if s.Version != "2.0.0" || s.Boot.IsCommitted {
					t.Errorf("device A: %+v, want 2.0.0 on trial, not committed", s)
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, aAddr, _ := httpDevice(t, "dev-A")
			b, bAddr, bLog := httpDevice(t, "dev-B")
			bBefore := b.State()
			proxy := startSwitchProxy(t, aAddr)
			port := "http://" + proxy.ln.Addr().String() + "/rpc"

			var data []byte
			if tc.push {
				data = benchBundle(t, 200<<10)
			} else {
				data, _ = emuBundle(t, "2.0.0", "")
			}
			path := bundleFile(t, data)
			dial := dialPort(port)
			var once sync.Once
			switched := false
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			rep := ota.Updater{Dial: dial, Address: port, File: path, Push: tc.push, ServeAddr: "127.0.0.1:0",
				Commit: true, CommitTimeout: time.Minute, RebootTimeout: 10 * time.Second, Timeout: 5 * time.Second,
				Health: ota.HealthOptions{Method: tc.health, Grace: 5 * time.Second},
				OnEvent: func(ev ota.Event) {
					if tc.switchOn(ev, int64(len(data))) {
						once.Do(func() {
							proxy.switchTo(bAddr)
							if tc.push {
								a.Reboot() // the device reset that renumbered its port
							}
							switched = true
						})
					}
				}}.Run(ctx)
			if !switched {
				t.Fatalf("the address was never switched: %+v", rep)
			}
			if rep.Reason != ota.ReasonDeviceChanged || rep.Reason.ExitCode() != ota.ExitUnreachable || rep.Result != tc.wantResult {
				t.Fatalf("reason %q (exit %d), result %q, want %q (exit 5), %q: %v", rep.Reason, rep.Reason.ExitCode(), rep.Result,
					ota.ReasonDeviceChanged, tc.wantResult, rep.Err)
			}
			t.Logf("exit %d, %s: %s", rep.Reason.ExitCode(), rep.Result, rep.Message)
			if !strings.Contains(rep.Message, `the port now reaches device "dev-B"`) || !strings.Contains(rep.Message, `not "dev-A"`) {
				t.Errorf("message does not name both devices: %s", rep.Message)
			}
			// Over HTTP the address changes between two requests unseen: the
			// one write sent right after the switch reaches device B (which
			// refuses it: it runs no update). Nothing else may: otactl knows
			// from B's first answer.
			writes := 0
			for _, m := range bLog.list() {
				if m == wire.OTAWrite {
					writes++
				}
				if (m != wire.OTAWrite || writes > 1) && !slices.Contains(readOnly, m) {
					t.Errorf("device B was called with %s (calls %v): nothing that changes its state may reach it once it answered", m, bLog.list())
				}
			}
			if calls := bLog.list(); !tc.push && tc.health == "" && len(calls) > 0 && calls[0] != wire.SysGetInfo {
				t.Errorf("device B's first call was %s (calls %v), not Sys.GetInfo", calls[0], calls)
			}
			bAfter := b.State()
			if bAfter.Boots != bBefore.Boots || bAfter.Boot != bBefore.Boot || bAfter.Version != bBefore.Version || bAfter.OTAState != bBefore.OTAState {
				t.Errorf("device B changed: before %+v, after %+v", bBefore, bAfter)
			}
			if tc.aAfter != nil {
				waitState(t, a, "device A back", func(s emulator.State) bool { return s.Online && s.Boots >= 2 })
				tc.aAfter(t, a.State())
			}
		})
	}
}
