package ota_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/rpc/frame"
)

// With several writes in flight, a device that gets them out of order
// refuses the early ones, naming the offset it expects (a real device does
// not wait for a gap); Push goes back there and the device ends up with the
// bundle as it is.
func TestPushWindowRecoversFromRefusedWrites(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		delayed := false
		d.writeHook = func(call int, off int64) fault {
			if off == 1024 && !delayed {
				delayed = true
				return fault{delay: time.Second} // overtaken by the writes after it
			}
			return fault{}
		}
		dev := ota.New(d.client(t))
		data := payload(512 * 10)
		ev := &events{}
		prog := &progressRec{t: t, d: d}
		res, err := dev.Push(ctx, bytes.NewReader(data), int64(len(data)), ota.PushOptions{ChunkSize: 512, Window: 4, OnEvent: ev.fn, Progress: prog.fn})
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := d.got(); !bytes.Equal(got, data) {
			t.Fatal("the device holds different data")
		}
		if !res.Confirmed || res.Retries == 0 || ev.count(ota.EventRetry) == 0 {
			t.Fatalf("result %+v, events %v: want resent writes", res, ev.kinds())
		}
		if got := prog.last(); got[0] != int64(len(data)) {
			t.Fatalf("progress %v", got)
		}
	})
}

// Up to Window writes are in flight before the first reply.
func TestPushWindowInFlight(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		d.ordered = true
		inFlight, most := 0, 0
		const delay = 10 * time.Millisecond
		d.writeHook = func(call int, off int64) fault {
			d.mu.Lock()
			inFlight++
			most = max(most, inFlight)
			d.mu.Unlock()
			time.Sleep(delay) // handling it, before the reply
			d.mu.Lock()
			inFlight--
			d.mu.Unlock()
			return fault{}
		}
		dev := ota.New(d.client(t))
		data := payload(512 * 20)
		start := time.Now()
		res, err := dev.Push(ctx, bytes.NewReader(data), int64(len(data)), ota.PushOptions{ChunkSize: 512, Window: 8})
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := d.got(); !bytes.Equal(got, data) || res.Retries != 0 {
			t.Fatalf("data differs or retries %d", res.Retries)
		}
		d.mu.Lock()
		m := most
		d.mu.Unlock()
		if m != 8 {
			t.Fatalf("at most %d writes in flight, want 8", m)
		}
		// 20 writes of 10 ms, 8 at a time, not one after another.
		if el := time.Since(start); el >= 200*time.Millisecond {
			t.Fatalf("took %v: the writes were not in flight together", el)
		}
	})
}

// The link drops in the middle of a push (the device keeps the update):
// Push redials, reads OTA.Status and goes on where the device is, whether
// the device reports its offset (the otactl emulator) or not (real
// firmware: the "expected" offset of its refusal tells).
func TestPushResumesAfterLinkLoss(t *testing.T) {
	for _, reportOffset := range []bool{true, false} {
		t.Run(fmt.Sprintf("offset=%v", reportOffset), func(t *testing.T) {
			bubble(t, func(t *testing.T, ctx context.Context) {
				d := newFakeDev(t)
				d.reportOffset = reportOffset
				d.ordered = true
				cut := false
				d.writeHook = func(call int, off int64) fault {
					if off == 2048 && !cut {
						cut = true
						d.mu.Lock()
						d.down = 2 // away for two dials
						d.mu.Unlock()
						return fault{hangUp: true} // applied, then the link drops
					}
					return fault{}
				}
				dev := ota.New(d.client(t))
				data := payload(512 * 10)
				ev := &events{}
				prog := &progressRec{t: t, d: d}
				res, err := dev.Push(ctx, bytes.NewReader(data), int64(len(data)), ota.PushOptions{ChunkSize: 512, Window: 3,
					Redial: d.dial(t), OnEvent: ev.fn, Progress: prog.fn})
				if err != nil {
					t.Fatal(err)
				}
				if got, _ := d.got(); !bytes.Equal(got, data) {
					t.Fatal("the device holds different data")
				}
				if !res.Confirmed || res.Resumes != 1 || ev.count(ota.EventResumed) != 1 || ev.count(ota.EventReconnecting) < 2 {
					t.Fatalf("result %+v, events %v", res, ev.kinds())
				}
				if d.count("OTA.Begin") != 1 || d.count("OTA.End") != 1 {
					t.Fatalf("Begin %d, End %d: the push must go on, not start over", d.count("OTA.Begin"), d.count("OTA.End"))
				}
				if got := prog.last(); got[0] != int64(len(data)) {
					t.Fatalf("progress %v", got)
				}
			})
		})
	}
}

// A device reset while the link was down no longer runs the update: that
// is a lost update (nothing applied), never resumed, never a link error.
func TestPushResetIsLostUpdate(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		d.ordered = true
		cut := false
		d.writeHook = func(call int, off int64) fault {
			if off == 2048 && !cut {
				cut = true
				d.mu.Lock()
				d.rebootInto(2, d.fw, d.boot) // reset: the same firmware, idle
				d.mu.Unlock()
				return fault{hangUp: true}
			}
			return fault{}
		}
		dev := ota.New(d.client(t))
		data := payload(512 * 10)
		_, err := dev.Push(ctx, bytes.NewReader(data), int64(len(data)), ota.PushOptions{ChunkSize: 512, Window: 2, Redial: d.dial(t)})
		var lost *ota.UpdateLostError
		if !errors.As(err, &lost) || !errors.Is(err, ota.ErrUpdateFailed) || ota.ReasonOf(err) != ota.ReasonDeviceReset {
			t.Fatalf("err = %v", err)
		}
		contains(t, err, "nothing was applied", "boot state is unchanged")
		// What the device confirmed: the replies that came before the link
		// dropped, of the two writes in flight around the cut at 2048.
		if lost.Offset < 2048-512 || lost.Offset > 2048+2*512 {
			t.Fatalf("offset %d", lost.Offset)
		}
		if _, bs, _ := d.state(); bs != (ota.BootState{IsCommitted: true}) {
			t.Fatalf("boot state %+v", bs)
		}
	})
}

// A reset noticed through the device's refusal of a write (a link such as
// HTTP that did not drop) is the same lost update.
func TestPushResetSeenInRefusalIsLostUpdate(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		d.writeHook = func(call int, off int64) fault {
			if off == 1024 {
				d.mu.Lock()
				d.status = ota.Status{State: ota.StateIdle} // rebooted between two writes
				d.bootedAt = time.Now()
				d.mu.Unlock()
			}
			return fault{}
		}
		dev := ota.New(d.client(t))
		data := payload(512 * 4)
		time.Sleep(10 * time.Second) // the device has been up a while when the push begins
		_, err := dev.Push(ctx, bytes.NewReader(data), int64(len(data)), ota.PushOptions{ChunkSize: 512})
		var lost *ota.UpdateLostError
		if !errors.As(err, &lost) || ota.ReasonOf(err) != ota.ReasonDeviceReset {
			t.Fatalf("err = %v", err)
		}
	})
}

// After a reset, another client started its own push: Push does not write
// into that update, whether OTA.Status tells the device's offset or only
// the device's refusal of the next write does, and does not abort it.
func TestPushNoResumeIntoAnotherUpdate(t *testing.T) {
	for _, reportOffset := range []bool{true, false} {
		t.Run(fmt.Sprintf("offset=%v", reportOffset), func(t *testing.T) {
			bubble(t, func(t *testing.T, ctx context.Context) {
				d := newFakeDev(t)
				d.reportOffset = reportOffset
				cut := false
				d.writeHook = func(call int, off int64) fault {
					if off == 2048 && !cut {
						cut = true
						d.mu.Lock()
						d.down = 1
						d.onUp = func(d *fakeDev) { d.data = d.data[:100] } // someone else's update, at 100
						d.mu.Unlock()
						return fault{hangUp: true}
					}
					return fault{}
				}
				dev := ota.New(d.client(t))
				data := payload(512 * 10)
				_, err := dev.Push(ctx, bytes.NewReader(data), int64(len(data)), ota.PushOptions{ChunkSize: 512, Redial: d.dial(t)})
				var lost *ota.UpdateLostError
				if !errors.As(err, &lost) || !lost.Other || ota.ReasonOf(err) != ota.ReasonBusy {
					t.Fatalf("err = %v", err)
				}
				if got, _ := d.got(); len(got) != 100 || d.count("OTA.End") != 0 {
					t.Fatalf("the other update holds %d bytes, OTA.End sent %d times", len(got), d.count("OTA.End"))
				}
			})
		})
	}
}

// The link does not come back: Push gives up after ReconnectTimeout with an
// error that says so (not a lost update: the device may still run it).
func TestPushGivesUpReconnecting(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		d.writeHook = func(call int, off int64) fault {
			if off == 1024 {
				d.mu.Lock()
				d.dialErr = errors.New("dial tcp 127.0.0.1:8080: connect: connection refused")
				d.mu.Unlock()
				return fault{hangUp: true}
			}
			return fault{}
		}
		dev := ota.New(d.client(t))
		data := payload(512 * 4)
		start := time.Now()
		_, err := dev.Push(ctx, bytes.NewReader(data), int64(len(data)), ota.PushOptions{ChunkSize: 512,
			Redial: d.dial(t), ReconnectTimeout: 90 * time.Second})
		var pe *ota.PushError
		if !errors.As(err, &pe) || !errors.Is(err, ota.ErrLinkLost) || !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ota.ErrUpdateFailed) {
			t.Fatalf("err = %v", err)
		}
		contains(t, err, "did not come back within 1m30s", "connection refused", "watchdog", "boot state is unchanged")
		if el := time.Since(start); el < 90*time.Second || el > 100*time.Second {
			t.Fatalf("gave up after %v", el)
		}
	})
}

// OTA.End lost on its way (the link dropped): the device still waits for
// the end of the data, so OTA.End is sent again over a new link.
func TestPushEndResentAfterLinkLoss(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		d.reportOffset = true
		ends := 0
		d.endHook = func() fault {
			if ends++; ends == 1 {
				d.mu.Lock()
				conn := d.conns[len(d.conns)-1]
				d.mu.Unlock()
				go conn.Close()
				return fault{drop: true} // not applied
			}
			return fault{}
		}
		dev := ota.New(d.client(t))
		data := payload(1500)
		res, err := dev.Push(ctx, bytes.NewReader(data), int64(len(data)), ota.PushOptions{ChunkSize: 512, Redial: d.dial(t)})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, endOK := d.state(); !endOK || !res.Confirmed || d.count("OTA.End") != 2 {
			t.Fatalf("result %+v, End calls %d", res, d.count("OTA.End"))
		}
	})
}

// A second device answers a write (two devices with one id on a broker):
// Push stops at once, neither retrying nor resuming, and sends nothing
// more that both devices would act on.
func TestPushStopsWhenTwoDevicesAnswer(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		d.srv.ID = "esp32_0A1B2C"
		d.replyHook = func(req, resp *frame.Frame) {
			var p struct{ Offset int64 }
			_ = json.Unmarshal(req.Params, &p)
			if req.Method == "OTA.Write" && p.Offset == 1024 {
				resp.Src = "the-other-device"
			}
		}
		dev := ota.New(d.client(t))
		data := payload(512 * 6)
		_, err := dev.Push(ctx, bytes.NewReader(data), int64(len(data)), ota.PushOptions{ChunkSize: 512, Redial: d.dial(t)})
		if !errors.Is(err, rpc.ErrDuplicateReply) || errors.Is(err, ota.ErrUpdateFailed) {
			t.Fatalf("err = %v", err)
		}
		if _, writes := d.got(); len(writes) != 3 || d.count("OTA.End") != 0 || d.dials != 0 {
			t.Fatalf("%d writes, %d OTA.End, %d dials after the second device answered", len(writes), d.count("OTA.End"), d.dials)
		}
	})
}

// A device that reports its offset in OTA.Status (the otactl emulator) is
// resumed exactly there: a write that landed but whose reply was lost with
// the link is not sent again only to be refused as the wrong offset.
func TestPushResumesAtTheOffsetTheDeviceReports(t *testing.T) {
	bubble(t, func(t *testing.T, ctx context.Context) {
		d := newFakeDev(t)
		d.reportOffset = true
		cut := false
		d.writeHook = func(call int, off int64) fault {
			if off == 2048 && !cut {
				cut = true
				d.mu.Lock()
				d.down = 1
				d.mu.Unlock()
				return fault{hangUp: true} // applied, then the link drops
			}
			return fault{}
		}
		dev := ota.New(d.client(t))
		data := payload(512 * 8)
		res, err := dev.Push(ctx, bytes.NewReader(data), int64(len(data)), ota.PushOptions{ChunkSize: 512, Window: 1, Redial: d.dial(t)})
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := d.got(); !bytes.Equal(got, data) || res.Resumes != 1 {
			t.Fatalf("resumes %d, the device holds the bundle: %v", res.Resumes, bytes.Equal(got, data))
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		var at2048 int
		for _, w := range d.writes {
			if w.off == 2048 {
				at2048++
			}
		}
		if at2048 != 1 {
			t.Fatalf("%d writes at offset 2048: OTA.Status said the device held 2560, so the push should have resumed there", at2048)
		}
	})
}
