package ota_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
)

func TestMaxChunkSizeFitsWorstCaseFrame(t *testing.T) {
	envs := map[string]ota.Envelope{
		"default": ota.DefaultEnvelope(),
		"minimal": {},
		"mqtt":    {Src: "esp32_0A1B2C/rpc-resp/otactl-0123456789abcdef", Dst: "esp32_0A1B2C"},
	}
	for name, env := range envs {
		for _, size := range []int64{1, 4095, 1 << 20, 1<<31 + 7} {
			for _, limit := range []int{frame.MaxSize, 2048, 8192} {
				n := ota.MaxChunkSize(limit, size, env)
				if n <= 0 || n%3 != 0 {
					t.Fatalf("%s size %d limit %d: chunk %d", name, size, limit, n)
				}
				// Worst case: the last offset, bytes that need no JSON escaping
				// but fill base64 fully.
				data := bytes.Repeat([]byte{0xff}, n)
				b, err := frame.Marshal(ota.WriteFrame(env, size-1, data))
				if err != nil {
					t.Fatal(err)
				}
				if len(b) > limit {
					t.Fatalf("%s size %d: chunk %d makes a %d-byte frame, over %d", name, size, n, len(b), limit)
				}
				// Maximal: one byte more no longer fits.
				b, _ = frame.Marshal(ota.WriteFrame(env, size-1, append(data, 0)))
				if len(b) <= limit {
					t.Fatalf("%s size %d: chunk %d is not the largest (%d+1 makes %d bytes)", name, size, n, n, len(b))
				}
			}
		}
	}
	// Not a small constant: most of the 4096 bytes carry data.
	if n := ota.MaxChunkSize(frame.MaxSize, 1<<20, ota.DefaultEnvelope()); n < 2600 {
		t.Fatalf("default chunk %d is too small", n)
	}
	if n := ota.MaxChunkSize(frame.MaxSize, 1<<20, ota.Envelope{Src: "otactl"}); n < 2950 {
		t.Fatalf("chunk with a minimal envelope %d is too small", n)
	}
	if n := ota.MaxChunkSize(100, 1<<20, ota.DefaultEnvelope()); n != 0 {
		t.Fatalf("impossible limit gives chunk %d", n)
	}
}

// TestPushDefaultChunk pushes with the default chunk size through a client
// whose frames are as large as they get: long src and dst, and in-frame
// digest auth with a long realm and user name. Every frame must fit 4096
// bytes, and nearly fill it.
func TestPushDefaultChunk(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		long := strings.Repeat("r", 64)
		d.srv.ID = strings.Repeat("d", 64)
		d.srv.SetGate(digestGate(long, long, "pw"))
		d.clientOpts = rpc.ClientOptions{Src: strings.Repeat("s", 96), Dst: d.srv.ID,
			Creds: &transport.Credentials{User: long, Password: "pw"}}
		dev := ota.New(d.client(t))
		chunk0 := ota.MaxChunkSize(frame.MaxSize, 99999, ota.DefaultEnvelope())
		data := payload(3*chunk0 + 1234)
		chunk := ota.MaxChunkSize(frame.MaxSize, int64(len(data)), ota.DefaultEnvelope())
		last := len(data) - 3*chunk
		prog := &progressRec{t: t, d: d}
		ev := &events{}
		res, err := dev.Push(ctx, bytes.NewReader(data), int64(len(data)), ota.PushOptions{Progress: prog.fn, OnEvent: ev.fn})
		if err != nil {
			t.Fatal(err)
		}
		if res.ChunkSize != chunk || res.Chunks != 4 || res.Retries != 0 || !res.Confirmed {
			t.Fatalf("result %+v, want chunk %d, 4 chunks, confirmed", res, chunk)
		}
		if got, _ := d.got(); !bytes.Equal(got, data) {
			t.Fatal("the device holds different data")
		}
		_, writes := d.got()
		for i, w := range writes {
			if w.off != int64(i*chunk) || (i < 3 && w.n != chunk) || (i == 3 && w.n != last) {
				t.Fatalf("write %d at %d of %d bytes", i, w.off, w.n)
			}
		}
		mx := 0
		for _, n := range d.frameSizes {
			mx = max(mx, n)
		}
		if mx > frame.MaxSize || mx < frame.MaxSize-40 {
			t.Fatalf("largest OTA.Write frame %d bytes: want <= %d and close to it", mx, frame.MaxSize)
		}
		mustJSON(t, d.lastParams("OTA.Begin"), fmt.Sprintf(`{"timeout":600,"commit_timeout":300,"size":%d}`, len(data)))
		if got := prog.last(); got != [2]int64{int64(len(data)), int64(len(data))} {
			t.Fatalf("last progress %v", got)
		}
		if k := ev.kinds(); len(k) != 3 || k[0] != ota.EventBegin || k[1] != ota.EventFinalizing || k[2] != ota.EventAccepted {
			t.Fatalf("events %v", k)
		}
	})
}

func digestGate(realm, user, pass string) func(context.Context, *rpc.Request) *frame.Error {
	const nonce = 1<<62 + 12345
	return func(_ context.Context, r *rpc.Request) *frame.Error {
		a := r.Frame.Auth
		if a != nil && a.Username == user && a.Realm == realm &&
			a.Response == rpc.DigestResponse(a.Algorithm, user, realm, pass, a.Nonce, a.CNonce) {
			return nil
		}
		return &frame.Error{Code: 401, Message: fmt.Sprintf(`{"auth_type":"digest","nonce":%d,"nc":1,"realm":%q,"algorithm":"SHA-256"}`, int64(nonce), realm)}
	}
}

func TestPush512ByteChunks(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		dev := ota.New(d.client(t))
		data := payload(512*5 + 100)
		res, err := dev.Push(ctx, bytes.NewReader(data), int64(len(data)), ota.PushOptions{ChunkSize: 512, CommitTimeout: 42 * time.Second, Timeout: 90 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if res.Chunks != 6 || res.ChunkSize != 512 {
			t.Fatalf("result %+v", res)
		}
		_, writes := d.got()
		for i, w := range writes {
			want := 512
			if i == 5 {
				want = 100
			}
			if w.off != int64(512*i) || w.n != want {
				t.Fatalf("write %d: offset %d, %d bytes", i, w.off, w.n)
			}
		}
		if got, _ := d.got(); !bytes.Equal(got, data) {
			t.Fatal("data differs")
		}
		mustJSON(t, d.lastParams("OTA.Begin"), fmt.Sprintf(`{"timeout":90,"commit_timeout":42,"size":%d}`, len(data)))
		// The data field is standard base64, with padding.
		p := d.lastParams("OTA.Write")
		if !strings.Contains(p, base64.StdEncoding.EncodeToString(data[512*5:])) {
			t.Fatalf("last write params %s", p)
		}
	})
}

func TestPushAutoCommitSendsZero(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		dev := ota.New(d.client(t))
		data := payload(10)
		if _, err := dev.Push(ctx, bytes.NewReader(data), 10, ota.PushOptions{CommitTimeout: ota.AutoCommit}); err != nil {
			t.Fatal(err)
		}
		mustJSON(t, d.lastParams("OTA.Begin"), `{"timeout":600,"commit_timeout":0,"size":10}`)
	})
}

// A write whose reply is lost is retried at the same offset; one that
// landed (reply lost) is recognised by the device's "expected" offset.
func TestPushRetriesSameOffset(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		dev := ota.New(d.client(t))
		data := payload(512 * 4)
		d.writeHook = func(call int, off int64) fault {
			switch {
			case off == 512 && call == 1:
				return fault{drop: true} // lost request
			case off == 1024 && call == 3:
				return fault{applyDrop: true} // lost reply
			}
			return fault{}
		}
		ev := &events{}
		start := time.Now()
		res, err := dev.Push(ctx, bytes.NewReader(data), int64(len(data)), ota.PushOptions{ChunkSize: 512, OnEvent: ev.fn})
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := d.got(); !bytes.Equal(got, data) {
			t.Fatal("data differs")
		}
		var offs []int64
		_, writes := d.got()
		for _, w := range writes {
			offs = append(offs, w.off)
		}
		if fmt.Sprint(offs) != "[0 512 512 1024 1024 1536]" {
			t.Fatalf("write offsets %v", offs)
		}
		if res.Retries != 2 || ev.count(ota.EventRetry) != 2 {
			t.Fatalf("retries %d, events %v", res.Retries, ev.kinds())
		}
		// Two lost replies, each waited for the 20 s write timeout.
		if el := time.Since(start); el != 2*ota.DefaultWriteTimeout {
			t.Fatalf("took %v", el)
		}
		for _, e := range ev.ev {
			if e.Kind == ota.EventRetry && (e.Attempt != 2 || !errors.Is(e.Err, context.DeadlineExceeded)) {
				t.Fatalf("retry event %+v", e)
			}
		}
	})
}

// The first write may take long (flash erase): it gets FirstWriteTimeout,
// later writes WriteTimeout.
func TestPushFirstWriteTimeout(t *testing.T) {
	slow := func(d *fakeDev) {
		d.writeHook = func(call int, off int64) fault {
			if call == 0 || (off == 512 && call == 1) {
				return fault{delay: 45 * time.Second}
			}
			return fault{}
		}
	}
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		slow(d)
		dev := ota.New(d.client(t))
		data := payload(512 * 3)
		res, err := dev.Push(ctx, bytes.NewReader(data), int64(len(data)), ota.PushOptions{ChunkSize: 512})
		if err != nil {
			t.Fatal(err)
		}
		// First write: 45 s < 60 s, answered. Second: 45 s > 20 s, retried
		// (the first attempt lands meanwhile; the retry is told so).
		_, writes := d.got()
		if res.Retries != 1 || writes[0].off != 0 || writes[1].off != 512 || writes[2].off != 512 {
			t.Fatalf("retries %d, writes %+v", res.Retries, writes)
		}
		if got, _ := d.got(); !bytes.Equal(got, data) {
			t.Fatal("data differs")
		}
	})
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		slow(d)
		dev := ota.New(d.client(t))
		data := payload(512 * 3)
		res, err := dev.Push(ctx, bytes.NewReader(data), int64(len(data)), ota.PushOptions{ChunkSize: 512, FirstWriteTimeout: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		_, writes := d.got()
		if res.Retries != 1 || writes[1].off != 0 {
			t.Fatalf("with a 30 s first-write timeout: retries %d, writes %+v", res.Retries, writes)
		}
	})
}

// A chunk that keeps failing aborts the push with OTA.End; the device's
// boot state is untouched and progress never reached 100%.
func TestPushAbortAfterTries(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		d.writeHook = func(call int, off int64) fault {
			if off == 1024 {
				return fault{drop: true}
			}
			return fault{}
		}
		dev := ota.New(d.client(t))
		data := payload(512 * 4)
		prog := &progressRec{t: t, d: d}
		ev := &events{}
		_, err := dev.Push(ctx, bytes.NewReader(data), int64(len(data)), ota.PushOptions{ChunkSize: 512, Progress: prog.fn, OnEvent: ev.fn})
		var pe *ota.PushError
		if !errors.As(err, &pe) || pe.Offset != 1024 || !pe.Aborted || pe.Rejected {
			t.Fatalf("err = %v (%#v)", err, pe)
		}
		if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ota.ErrUpdateFailed) {
			t.Fatalf("a timeout is not a rejected update: %v", err)
		}
		contains(t, err, "offset 1024", "aborted", "boot state is unchanged")
		if _, writes := d.got(); len(writes) != 2+3 {
			t.Fatalf("%d writes, want 2 + 3 tries", len(writes))
		}
		if st, bs, _ := d.state(); d.count("OTA.End") != 1 || st.State != ota.StateError || bs != (ota.BootState{IsCommitted: true}) {
			t.Fatalf("End calls %d, status %+v, boot %+v", d.count("OTA.End"), st, bs)
		}
		if got := prog.last(); got[0] != 1024 {
			t.Fatalf("last progress %v", got)
		}
		if ev.count(ota.EventAbort) != 1 {
			t.Fatalf("events %v", ev.kinds())
		}
	})
}

// A device error on a write is not retried: the device has aborted.
func TestPushRejectedWrite(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		d.writeHook = func(call int, off int64) fault {
			if off == 512 {
				d.mu.Lock()
				d.status = ota.Status{State: ota.StateError, Msg: "Digest mismatch"}
				d.mu.Unlock()
				return fault{err: rpc.Errorf(-1, "Digest mismatch")}
			}
			return fault{}
		}
		dev := ota.New(d.client(t))
		data := payload(512 * 3)
		_, err := dev.Push(ctx, bytes.NewReader(data), int64(len(data)), ota.PushOptions{ChunkSize: 512})
		var re *rpc.Error
		var pe *ota.PushError
		if !errors.Is(err, ota.ErrUpdateFailed) || !errors.As(err, &re) || re.Message != "Digest mismatch" || !errors.As(err, &pe) || !pe.Rejected {
			t.Fatalf("err = %v", err)
		}
		if _, writes := d.got(); len(writes) != 2 || d.count("OTA.End") != 1 {
			t.Fatalf("writes %d, End %d", len(writes), d.count("OTA.End"))
		}
	})
}

// Cancelling the push (Ctrl-C) still aborts the update on the device.
func TestPushCancelAborts(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		dev := ota.New(d.client(t))
		data := payload(512 * 4)
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		_, err := dev.Push(ctx, bytes.NewReader(data), int64(len(data)), ota.PushOptions{ChunkSize: 512,
			Progress: func(sent, _ int64) {
				if sent == 1024 {
					cancel()
				}
			}})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v", err)
		}
		if st, _, endOK := d.state(); d.count("OTA.End") != 1 || st.State != ota.StateError || endOK {
			t.Fatalf("End %d, status %+v", d.count("OTA.End"), st)
		}
	})
}

func TestPushEndRejected(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		d.endHook = func() fault { return fault{err: rpc.Errorf(-1, "Invalid manifest")} }
		dev := ota.New(d.client(t))
		data := payload(600)
		prog := &progressRec{t: t, d: d}
		_, err := dev.Push(ctx, bytes.NewReader(data), int64(len(data)), ota.PushOptions{ChunkSize: 512, Progress: prog.fn})
		var re *rpc.Error
		if !errors.Is(err, ota.ErrUpdateFailed) || !errors.As(err, &re) {
			t.Fatalf("err = %v", err)
		}
		contains(t, err, "Invalid manifest", "boot state is unchanged")
		if got := prog.last(); got[0] != 512 {
			t.Fatalf("progress %v", got)
		}
	})
}

func TestPushStatusGate(t *testing.T) {
	for _, tc := range []struct {
		state ota.State
		ok    bool
		want  string
	}{
		{ota.StateIdle, true, ""},
		{ota.StateError, true, ""},
		{ota.StateProgress, false, "already in progress"},
		{ota.StateSuccess, false, "about to reboot"},
	} {
		t.Run(tc.state.String(), func(t *testing.T) {
			bubble(t, func(t *testing.T, ctx context.Context) {
				d := newFakeDev(t)
				d.status = ota.Status{State: tc.state, ProgressPercent: 37}
				dev := ota.New(d.client(t))
				_, err := dev.Push(ctx, bytes.NewReader(payload(10)), 10, ota.PushOptions{})
				if tc.ok {
					if err != nil {
						t.Fatal(err)
					}
					return
				}
				if !errors.Is(err, ota.ErrBusy) || !errors.Is(err, ota.ErrUpdateFailed) {
					t.Fatalf("err = %v", err)
				}
				contains(t, err, tc.want)
				if d.count("OTA.Begin") != 0 {
					t.Fatal("OTA.Begin was called")
				}
			})
		})
	}
}

func TestPushBeginRefusedUncommitted(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		d.boot = ota.BootState{ActiveSlot: 1, RevertSlot: 0, IsCommitted: false, CommitTimeout: 300}
		dev := ota.New(d.client(t))
		_, err := dev.Push(ctx, bytes.NewReader(payload(10)), 10, ota.PushOptions{})
		var re *rpc.Error
		if !errors.Is(err, ota.ErrUpdateFailed) || !errors.As(err, &re) || re.Message != "Failed to init updater" {
			t.Fatalf("err = %v", err)
		}
		contains(t, err, "not committed", "otactl commit")
	})
}

// The device reboots right after finalising: a lost link (or no reply)
// after OTA.End is success, unconfirmed, and progress stays below 100%.
func TestPushEndRebootTolerated(t *testing.T) {
	for name, f := range map[string]fault{"hang up": {hangUp: true}, "no reply": {applyDrop: true}} {
		t.Run(name, func(t *testing.T) {
			bubble(t, func(t *testing.T, ctx context.Context) {
				d := newFakeDev(t)
				d.endHook = func() fault { return f }
				dev := ota.New(d.client(t))
				data := payload(1500)
				prog := &progressRec{t: t, d: d}
				ev := &events{}
				start := time.Now()
				res, err := dev.Push(ctx, bytes.NewReader(data), int64(len(data)), ota.PushOptions{ChunkSize: 512, Progress: prog.fn, OnEvent: ev.fn})
				if err != nil {
					t.Fatal(err)
				}
				if _, _, endOK := d.state(); res.Confirmed || !endOK || ev.count(ota.EventNoReply) != 1 {
					t.Fatalf("result %+v, events %v", res, ev.kinds())
				}
				if got := prog.last(); got[0] != 1024 {
					t.Fatalf("progress %v: must not claim 100%% unconfirmed", got)
				}
				if name == "no reply" && time.Since(start) != ota.DefaultEndTimeout {
					t.Fatalf("waited %v for End", time.Since(start))
				}
			})
		})
	}
}

// The last chunk landed but every reply was lost: the abort OTA.End
// finalises, so the push succeeded after all.
func TestPushLastChunkRepliesLost(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		d.writeHook = func(call int, off int64) fault {
			if off == 512 {
				if call == 1 {
					return fault{applyDrop: true}
				}
				return fault{drop: true}
			}
			return fault{}
		}
		dev := ota.New(d.client(t))
		data := payload(700)
		prog := &progressRec{t: t, d: d}
		res, err := dev.Push(ctx, bytes.NewReader(data), int64(len(data)), ota.PushOptions{ChunkSize: 512, Progress: prog.fn})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, endOK := d.state(); !res.Confirmed || !endOK || prog.last()[0] != 700 || res.Chunks != 2 {
			t.Fatalf("result %+v, progress %v", res, prog.last())
		}
	})
}

// A short reader is an error, and the update is aborted.
func TestPushShortReader(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		dev := ota.New(d.client(t))
		_, err := dev.Push(ctx, bytes.NewReader(payload(600)), 1000, ota.PushOptions{ChunkSize: 512})
		var pe *ota.PushError
		if !errors.As(err, &pe) || pe.Offset != 512 || !pe.Aborted {
			t.Fatalf("err = %v", err)
		}
		contains(t, err, "reading the bundle")
	})
}

// Chunks are sized for the credentials actually used: a user name longer
// than any fixed reservation (here 600 bytes) still keeps every OTA.Write
// frame within the device's 4096 bytes, and a short realm and user name
// leave more room for data than the worst case.
func TestPushChunksFollowTheCredentials(t *testing.T) {
	for _, user := range []string{strings.Repeat("u", 600), "admin"} {
		t.Run(fmt.Sprintf("user%d", len(user)), func(t *testing.T) {
			bubble(t, func(t *testing.T, ctx context.Context) {
				d := newFakeDev(t)
				d.srv.SetGate(digestGate("dev", user, "pw"))
				d.clientOpts = rpc.ClientOptions{Creds: &transport.Credentials{User: user, Password: "pw"}}
				dev := ota.New(d.client(t))
				data := payload(5 * 4096)
				res, err := dev.Push(ctx, bytes.NewReader(data), int64(len(data)), ota.PushOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if got, _ := d.got(); !bytes.Equal(got, data) {
					t.Fatal("the device holds different data")
				}
				mx := 0
				for _, n := range d.frameSizes {
					mx = max(mx, n)
				}
				if mx > frame.MaxSize || mx < frame.MaxSize-40 {
					t.Fatalf("largest OTA.Write frame %d bytes (chunk %d): want <= %d and close to it", mx, res.ChunkSize, frame.MaxSize)
				}
				if def := ota.MaxChunkSize(frame.MaxSize, int64(len(data)), ota.DefaultEnvelope()); len(user) < 64 && res.ChunkSize <= def {
					t.Fatalf("chunk %d with a short user name and realm, no more than the worst case %d", res.ChunkSize, def)
				}
			})
		})
	}
}

// flakyWrites fails OTA.Write at once, as an HTTP link does while the
// device's Wi-Fi is gone, until the given time.
type flakyWrites struct {
	c     ota.Caller
	until time.Time
	fails int
}

func (f *flakyWrites) Call(ctx context.Context, method string, params any) (json.RawMessage, error) {
	if method == "OTA.Write" && time.Now().Before(f.until) {
		f.fails++
		return nil, &rpc.LinkError{Method: method, Err: errors.New("dial tcp 192.168.4.1:80: connect: no route to host")}
	}
	return f.c.Call(ctx, method, params)
}

// A write that fails at once (the link is briefly gone) is retried after a
// pause, not three times within a millisecond.
func TestPushRetryPausesAfterInstantFailure(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		f := &flakyWrites{c: d.client(t), until: time.Now().Add(1500 * time.Millisecond)}
		data := payload(1500)
		ev := &events{}
		res, err := ota.New(f).Push(ctx, bytes.NewReader(data), int64(len(data)), ota.PushOptions{ChunkSize: 512, OnEvent: ev.fn})
		if err != nil {
			t.Fatalf("%v (after %d instant failures)", err, f.fails)
		}
		if got, _ := d.got(); !bytes.Equal(got, data) || res.Retries != 2 || f.fails != 2 {
			t.Fatalf("result %+v, %d failures", res, f.fails)
		}
	})
}
