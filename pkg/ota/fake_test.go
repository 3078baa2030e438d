package ota_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/pipe"
	"github.com/otactl/otactl/pkg/transport/transporttest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, transporttest.LeakIgnores()...) }

// fault is what the fake device does with one request instead of, or
// before, answering normally.
type fault struct {
	delay     time.Duration // wait (bubble time) before handling
	drop      bool          // never answer; the request is not applied
	applyDrop bool          // apply the request, then never answer
	hangUp    bool          // apply, then close the link instead of answering
	err       *rpc.Error    // answer with this error, not applied
}

type writeRec struct {
	off      int64
	n        int
	frameLen int
	at       time.Time
}

// fakeDev is just enough of a Mongoose OS device, behind an rpc.Server
// served through the in-process pipe transport (frames really encoded), to
// test this package's side precisely. Time is the synctest bubble's.
type fakeDev struct {
	t   *testing.T
	srv *rpc.Server

	mu       sync.Mutex
	fw       ota.Firmware
	bootedAt time.Time
	boot     ota.BootState
	status   ota.Status
	calls    map[string]int
	params   map[string][]string

	// push
	size      int64
	pushCT    int
	data      []byte
	writes    []writeRec
	endOK     bool // OTA.End finalised
	writeHook func(call int, off int64) fault
	endHook   func() fault
	newFW     ota.Firmware // the firmware in the pushed bundle
	// reportOffset makes OTA.Status report "offset" during a push, as the
	// otactl emulator does (real firmware does not).
	reportOffset bool
	// ordered makes a write that arrives ahead of the expected offset wait
	// for the writes before it, as the otactl emulator does (the pipe
	// transport runs handlers concurrently). Without it, such a write is
	// refused at once, naming the expected offset.
	ordered bool
	moved   chan struct{} // closed and replaced when data grows
	// replyHook, if set, may change each reply as it leaves.
	replyHook func(req, resp *frame.Frame)
	// loseGetInfo: that many Sys.GetInfo requests are lost (never seen,
	// never answered), as requests sent while a device was away are.
	loseGetInfo int

	// link and reboots
	clientOpts rpc.ClientOptions
	conns      []*pipe.Conn
	frameSizes []int // OTA.Write request frames as encoded on the wire
	down       int   // dials that fail before the device is back
	onUp       func(d *fakeDev)
	dials      int
	dialErr    error
}

func newFakeDev(t *testing.T) *fakeDev {
	d := &fakeDev{
		t:        t,
		srv:      rpc.NewServer(""),
		fw:       ota.Firmware{Version: "1.0", BuildID: "20240101-000000/old"},
		bootedAt: time.Now(),
		boot:     ota.BootState{ActiveSlot: 0, RevertSlot: 0, IsCommitted: true},
		calls:    map[string]int{},
		params:   map[string][]string{},
		newFW:    ota.Firmware{Version: "1.1", BuildID: "20240202-000000/new"},
	}
	h := func(name string, fn rpc.HandlerFunc) {
		d.srv.Handle(name, func(ctx context.Context, r *rpc.Request) (any, error) {
			d.mu.Lock()
			d.calls[name]++
			d.params[name] = append(d.params[name], string(r.Params))
			d.mu.Unlock()
			return fn(ctx, r)
		})
	}
	h("Sys.GetInfo", func(context.Context, *rpc.Request) (any, error) {
		d.mu.Lock()
		defer d.mu.Unlock()
		return map[string]any{
			"id": "esp32_0A1B2C", "app": "demo", "arch": "esp32", "mac": "020000000000",
			"fw_version": d.fw.Version, "fw_id": d.fw.BuildID,
			"uptime": int64(time.Since(d.bootedAt) / time.Second),
		}, nil
	})
	h("OTA.GetBootState", func(context.Context, *rpc.Request) (any, error) {
		d.mu.Lock()
		defer d.mu.Unlock()
		return d.boot, nil
	})
	h("OTA.Status", func(context.Context, *rpc.Request) (any, error) {
		d.mu.Lock()
		defer d.mu.Unlock()
		st := map[string]any{"state": d.status.State, "msg": d.status.Msg, "progress_percent": d.status.ProgressPercent,
			"is_committed": d.boot.IsCommitted, "commit_timeout": d.boot.CommitTimeout, "partition": d.boot.ActiveSlot}
		if d.reportOffset && d.status.State == ota.StateProgress {
			st["offset"] = len(d.data)
		}
		return st, nil
	})
	h("OTA.Begin", func(_ context.Context, r *rpc.Request) (any, error) {
		d.mu.Lock()
		defer d.mu.Unlock()
		if !d.boot.IsCommitted {
			return nil, rpc.Errorf(-1, "Failed to init updater")
		}
		if d.status.State == ota.StateProgress {
			return nil, rpc.Errorf(-1, "Update already in progress")
		}
		size, _, _ := r.Int("size")
		ct, _, _ := r.Int("commit_timeout")
		d.size, d.pushCT, d.data, d.endOK = size, int(ct), nil, false
		d.status = ota.Status{State: ota.StateProgress}
		return nil, nil
	})
	h("OTA.Write", d.write)
	h("OTA.End", d.end)
	return d
}

func (d *fakeDev) apply(ctx context.Context, f fault) (stop bool, err error) {
	if f.delay > 0 {
		time.Sleep(f.delay)
	}
	if f.err != nil {
		return true, f.err
	}
	if f.drop {
		<-ctx.Done()
		return true, ctx.Err()
	}
	return false, nil
}

func (d *fakeDev) write(ctx context.Context, r *rpc.Request) (any, error) {
	d.mu.Lock()
	call := len(d.writes)
	off, _, _ := r.Int("offset")
	s, _ := r.String("data")
	raw, derr := base64.StdEncoding.DecodeString(s)
	b, _ := frame.Marshal(r.Frame)
	d.writes = append(d.writes, writeRec{off: off, n: len(raw), frameLen: len(b), at: time.Now()})
	hook := d.writeHook
	d.mu.Unlock()
	var f fault
	if hook != nil {
		f = hook(call, off)
	}
	if stop, err := d.apply(ctx, f); stop {
		return nil, err
	}
	d.mu.Lock()
	for d.ordered && off > int64(len(d.data)) && d.status.State == ota.StateProgress {
		if d.moved == nil {
			d.moved = make(chan struct{})
		}
		moved := d.moved
		d.mu.Unlock()
		select {
		case <-moved:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		d.mu.Lock()
	}
	if derr != nil {
		d.mu.Unlock()
		return nil, rpc.Errorf(-1, "Malformed request")
	}
	if d.status.State != ota.StateProgress {
		d.mu.Unlock()
		return nil, rpc.Errorf(-1, "Update not started")
	}
	if off != int64(len(d.data)) {
		err := rpc.Errorf(-1, "Wrong offset %d, expected %d", off, len(d.data))
		d.mu.Unlock()
		return nil, err
	}
	d.data = append(d.data, raw...)
	if d.moved != nil {
		close(d.moved)
		d.moved = nil
	}
	conn := d.conns[len(d.conns)-1]
	d.mu.Unlock()
	if f.applyDrop {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if f.hangUp {
		go conn.Close()
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return nil, nil
}

func (d *fakeDev) end(ctx context.Context, _ *rpc.Request) (any, error) {
	d.mu.Lock()
	hook := d.endHook
	d.mu.Unlock()
	var f fault
	if hook != nil {
		f = hook()
	}
	if stop, err := d.apply(ctx, f); stop {
		return nil, err
	}
	d.mu.Lock()
	if d.status.State != ota.StateProgress {
		d.mu.Unlock()
		return nil, rpc.Errorf(-1, "Update not started")
	}
	if int64(len(d.data)) != d.size {
		d.status = ota.Status{State: ota.StateError, Msg: "Premature end of update"}
		d.mu.Unlock()
		return nil, rpc.Errorf(-1, "Premature end of update")
	}
	// Finalise: the new slot boots next, on trial.
	old := d.boot.ActiveSlot
	d.boot = ota.BootState{ActiveSlot: 1 - old, RevertSlot: old, IsCommitted: false, CommitTimeout: d.pushCT}
	d.status = ota.Status{State: ota.StateSuccess}
	d.endOK = true
	conn := d.conns[len(d.conns)-1]
	d.mu.Unlock()
	if f.applyDrop {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if f.hangUp {
		go conn.Close()
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return nil, nil
}

// handler records the size of OTA.Write frames as they travel.
func (d *fakeDev) handler() transport.Handler {
	return transport.HandlerFunc(func(ctx context.Context, f *frame.Frame) *frame.Frame {
		if f.Method == "OTA.Write" {
			b, err := frame.Marshal(f)
			if err != nil {
				d.t.Errorf("re-encoding a request: %v", err)
			}
			d.mu.Lock()
			d.frameSizes = append(d.frameSizes, len(b))
			d.mu.Unlock()
		}
		d.mu.Lock()
		lost := f.Method == "Sys.GetInfo" && d.loseGetInfo > 0
		if lost {
			d.loseGetInfo--
		}
		d.mu.Unlock()
		if lost {
			return nil
		}
		resp := d.srv.HandleFrame(ctx, f)
		d.mu.Lock()
		hook := d.replyHook
		d.mu.Unlock()
		if hook != nil && resp != nil {
			hook(f, resp)
		}
		return resp
	})
}

// client connects a new RPC client to the device, closed at cleanup.
func (d *fakeDev) client(t *testing.T) *rpc.Client {
	t.Helper()
	conn := pipe.New(d.handler())
	d.mu.Lock()
	d.conns = append(d.conns, conn)
	opts := d.clientOpts
	d.mu.Unlock()
	c := rpc.NewClient(conn, opts)
	t.Cleanup(func() { c.Close() })
	return c
}

// dial is an ota.Dialer: it fails while the device is down, then applies
// onUp (the reboot) and connects.
func (d *fakeDev) dial(t *testing.T) ota.Dialer {
	return func(ctx context.Context) (*rpc.Client, error) {
		d.mu.Lock()
		d.dials++
		if d.dialErr != nil {
			err := d.dialErr
			d.mu.Unlock()
			return nil, err
		}
		if d.down > 0 {
			d.down--
			d.mu.Unlock()
			return nil, errors.New("dial tcp 127.0.0.1:8080: connect: connection refused")
		}
		if up := d.onUp; up != nil {
			d.onUp = nil
			up(d)
		}
		d.mu.Unlock()
		return d.client(t), nil
	}
}

// rebootOnDial returns a dialer to d that makes it reboot into fw with
// boot state bs (away for `down` dials) on the nth dial.
func (d *fakeDev) rebootOnDial(t *testing.T, n, down int, fw ota.Firmware, bs ota.BootState) ota.Dialer {
	inner := d.dial(t)
	calls := 0
	return func(ctx context.Context) (*rpc.Client, error) {
		if calls++; calls == n {
			d.mu.Lock()
			d.rebootInto(down, fw, bs)
			d.mu.Unlock()
		}
		return inner(ctx)
	}
}

// rebootInto makes the device go away for `down` dials and come back
// running fw with boot state bs.
func (d *fakeDev) rebootInto(down int, fw ota.Firmware, bs ota.BootState) {
	d.down = down
	d.onUp = func(d *fakeDev) {
		d.fw, d.boot, d.bootedAt = fw, bs, time.Now()
		d.status = ota.Status{State: ota.StateIdle}
	}
}

func (d *fakeDev) count(method string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.calls[method]
}

func (d *fakeDev) lastParams(method string) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.params[method]
	if len(p) == 0 {
		return ""
	}
	return p[len(p)-1]
}

// payload returns n pseudo-random bytes.
func payload(n int) []byte {
	r := rand.New(rand.NewPCG(uint64(n), 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// progressRec records Progress calls and checks that 100% never comes
// before the device finalised.
type progressRec struct {
	t     *testing.T
	d     *fakeDev
	mu    sync.Mutex
	calls [][2]int64
}

func (p *progressRec) fn(sent, total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.calls); n > 0 && sent < p.calls[n-1][0] {
		p.t.Errorf("progress went back: %d after %d", sent, p.calls[n-1][0])
	}
	if sent >= total {
		p.d.mu.Lock()
		ok := p.d.endOK
		p.d.mu.Unlock()
		if !ok {
			p.t.Errorf("progress reported %d/%d before OTA.End succeeded", sent, total)
		}
	}
	p.calls = append(p.calls, [2]int64{sent, total})
}

func (p *progressRec) last() [2]int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.calls) == 0 {
		return [2]int64{}
	}
	return p.calls[len(p.calls)-1]
}

// events collects Events.
type events struct {
	mu sync.Mutex
	ev []ota.Event
}

func (e *events) fn(ev ota.Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.ev = append(e.ev, ev)
}

func (e *events) kinds() []ota.EventKind {
	e.mu.Lock()
	defer e.mu.Unlock()
	var k []ota.EventKind
	for _, ev := range e.ev {
		k = append(k, ev.Kind)
	}
	return k
}

func (e *events) count(k ota.EventKind) int {
	n := 0
	for _, x := range e.kinds() {
		if x == k {
			n++
		}
	}
	return n
}

// bubble runs f in a synctest bubble with a bounded context.
func bubble(t *testing.T, f func(t *testing.T, ctx context.Context)) {
	t.Helper()
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 24*time.Hour)
		defer cancel()
		f(t, ctx)
	})
}

func mustJSON(t *testing.T, got, want string) {
	t.Helper()
	var a, b any
	if err := json.Unmarshal([]byte(got), &a); err != nil {
		t.Fatalf("not JSON: %q", got)
	}
	_ = json.Unmarshal([]byte(want), &b)
	ga, _ := json.Marshal(a)
	wb, _ := json.Marshal(b)
	if !bytes.Equal(ga, wb) {
		t.Fatalf("params = %s, want %s", got, want)
	}
}

func contains(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one containing %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Fatalf("error %q does not contain %q", err, p)
		}
	}
}

// state returns the device's OTA state under its lock.
func (d *fakeDev) state() (st ota.Status, bs ota.BootState, endOK bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.status, d.boot, d.endOK
}

// got returns copies of the received data and the write log.
func (d *fakeDev) got() ([]byte, []writeRec) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return bytes.Clone(d.data), append([]writeRec(nil), d.writes...)
}

// sysInfo is what the fake's Sys.GetInfo answers, read under d.mu.
func (d *fakeDev) sysInfoLocked() map[string]any {
	return map[string]any{
		"id": "esp32_0A1B2C", "app": "demo", "arch": "esp32",
		"fw_version": d.fw.Version, "fw_id": d.fw.BuildID,
		"uptime": int64(time.Since(d.bootedAt) / time.Second),
	}
}

// slowDial connects through a link with this round-trip time (half each
// way), e.g. MQTT over a congested cellular uplink.
func (d *fakeDev) slowDial(t *testing.T, rtt time.Duration) ota.Dialer {
	return func(ctx context.Context) (*rpc.Client, error) {
		h := d.handler()
		conn := pipe.New(transport.HandlerFunc(func(ctx context.Context, f *frame.Frame) *frame.Frame {
			time.Sleep(rtt / 2)
			r := h.HandleFrame(ctx, f)
			time.Sleep(rtt / 2)
			return r
		}))
		c := rpc.NewClient(conn, rpc.ClientOptions{})
		t.Cleanup(func() { c.Close() })
		return c, nil
	}
}
