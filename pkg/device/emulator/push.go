package emulator

import (
	"context"
	"encoding/base64"
	"io"
	"time"

	"github.com/otactl/otactl/pkg/ota/wire"
	"github.com/otactl/otactl/pkg/rpc"
)

// A push (OTA.Begin, OTA.Write..., OTA.End) feeds the same streaming
// updater as OTA.Update, through a pipe. docs/emulator.md ("Pushing a
// bundle") describes the rules kept here:
//
//   - writes are processed in offset order, one at a time, as a device's
//     single event loop processes frames in the order they arrive. The
//     transports run handlers concurrently per frame, so a write that
//     arrives ahead of a gap (a client keeping several writes in flight)
//     waits for the gap to be filled: for as long as an earlier write is
//     being processed, then at most reorderWait of (device clock) time;
//   - a write at any other offset is refused with the offset the device
//     expects: "Wrong offset N, expected M";
//   - the push lives on while no client is connected, until its watchdog
//     fires (the update's timeout): a client that lost its link reads the
//     expected offset from OTA.Status ("offset", an emulator extension)
//     and resumes there.

const (
	// reorderWait bounds how long a write that arrived ahead of a gap
	// waits for it while no write is being processed.
	reorderWait = time.Second
	// maxEarlyWrites bounds the writes waiting for a gap at one time (a
	// device has little memory); more are refused at once.
	maxEarlyWrites = 64
)

func (d *Device) otaBegin(_ context.Context, req *rpc.Request) (any, error) {
	size := intArg(req, "size", 0)
	u, err := d.beginUpdate(intArg(req, "timeout", 0), intArg(req, "commit_timeout", 0), size, true)
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	u.pmu.Lock()
	u.pw = pw
	u.pmu.Unlock()
	stop := context.AfterFunc(u.ctx, func() { pr.CloseWithError(context.Cause(u.ctx)) })
	if !d.spawn(func() {
		defer stop()
		target, err := d.apply(u, pr)
		if err == nil {
			// The rest (central directory) is not parsed but counted, as
			// a device does; wait for End.
			if _, derr := io.Copy(io.Discard, &countingReader{u: u, r: pr}); derr != nil {
				err = derr
			}
		}
		if err != nil {
			pr.CloseWithError(err)
		}
		d.finishUpdate(u, target, err)
	}) {
		d.finishUpdate(u, 0, errRebooted)
	}
	return nil, nil
}

// pushUpdate returns the running push update, or the error to reply.
func (d *Device) pushUpdate() (*update, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	u := d.upd
	if u == nil || !u.push {
		if d.status.state == wire.StateError {
			return nil, rpc.Errorf(wire.CodeFailed, "%s", d.status.msg)
		}
		return nil, rpc.Errorf(wire.CodeFailed, wire.MsgNotStarted)
	}
	return u, nil
}

func (d *Device) otaWrite(ctx context.Context, req *rpc.Request) (any, error) {
	u, err := d.pushUpdate()
	if err != nil {
		return nil, err
	}
	off, ok, oerr := req.Int("offset")
	data, dok := req.String("data")
	if !ok || oerr != nil || !dok {
		return nil, rpc.Errorf(wire.CodeFailed, wire.MsgMalformed)
	}
	raw, err := base64.StdEncoding.DecodeString(data)
	if err != nil {
		return nil, rpc.Errorf(wire.CodeFailed, wire.MsgMalformed)
	}
	if err := u.awaitTurn(ctx, d.clock, off); err != nil {
		return nil, err
	}
	// This write's turn: u.busy is set, nothing else feeds the pipe.
	n, werr := u.pw.Write(raw)
	if n > 0 {
		// A device processes the chunk before it replies: by then
		// OTA.Status shows it (the pipe's reader may not have counted it
		// yet).
		u.got.Add(int64(n))
	}
	u.pmu.Lock()
	u.next += int64(n)
	u.busy = false
	u.movedLocked()
	u.pmu.Unlock()
	if werr != nil {
		return nil, endedError(u)
	}
	return nil, nil
}

// wrongOffset is the reply to a write at an offset other than the expected
// one; it names the expected offset, so a client knows where to go on.
func wrongOffset(off, expected int64) error {
	return rpc.Errorf(wire.CodeFailed, "%s", wire.WrongOffset(off, expected))
}

// movedLocked wakes the writes waiting for their turn; u.pmu is held.
func (u *update) movedLocked() chan struct{} {
	if u.moved != nil {
		close(u.moved)
	}
	u.moved = make(chan struct{})
	return u.moved
}

// awaitTurn returns once off is the expected offset and no other write is
// being processed, having marked u busy; or the reply that refuses the
// write. A write ahead of the expected offset waits (see reorderWait); one
// behind it is refused at once.
func (u *update) awaitTurn(ctx context.Context, clock Clock, off int64) error {
	u.pmu.Lock()
	var (
		expired chan struct{} // closed by timer
		timer   Timer
	)
	stopTimer := func() {
		if timer != nil {
			timer.Stop()
			timer, expired = nil, nil
		}
	}
	defer stopTimer()
	for {
		if u.ctx.Err() != nil { // watchdog fired, rebooting, or finished
			u.pmu.Unlock()
			return endedError(u)
		}
		if off == u.next && !u.busy {
			u.busy = true
			u.movedLocked()
			u.pmu.Unlock()
			return nil
		}
		timedOut := false
		if expired != nil {
			select {
			case <-expired:
				timedOut = true
			default:
			}
		}
		if off < u.next || (!u.busy && (timedOut || u.waiting >= maxEarlyWrites)) {
			err := wrongOffset(off, u.next)
			u.pmu.Unlock()
			return err
		}
		// Wait for the writes before this one: without limit while one
		// is being processed, then reorderWait of idle time.
		if u.busy {
			stopTimer()
		} else if timer == nil {
			ch := make(chan struct{})
			expired, timer = ch, clock.AfterFunc(reorderWait, func() { close(ch) })
		}
		if u.moved == nil {
			u.moved = make(chan struct{})
		}
		moved, exp := u.moved, expired
		u.waiting++
		u.pmu.Unlock()
		select {
		case <-moved:
		case <-exp:
		case <-ctx.Done():
		case <-u.ctx.Done():
		}
		u.pmu.Lock()
		u.waiting--
		if err := ctx.Err(); err != nil { // the client is gone: no reply
			u.pmu.Unlock()
			return err
		}
	}
}

// endedError is the reply to a Write that found u ending: its failure, or
// "not started" when it ended well (OTA.End got there first).
func endedError(u *update) error {
	<-u.done
	if u.err == nil {
		return rpc.Errorf(wire.CodeFailed, wire.MsgNotStarted)
	}
	return rpc.Errorf(wire.CodeFailed, "%s", statusMessage(u.err))
}

func (d *Device) otaEnd(ctx context.Context, _ *rpc.Request) (any, error) {
	u, err := d.pushUpdate()
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	u.reply = callFrom(ctx) // the call that replies the outcome, before it can end
	d.mu.Unlock()
	// After the write being processed, if any: the device handles frames
	// one at a time.
	u.pmu.Lock()
	for u.busy && u.ctx.Err() == nil {
		if u.moved == nil {
			u.moved = make(chan struct{})
		}
		moved := u.moved
		u.pmu.Unlock()
		select {
		case <-moved:
		case <-u.ctx.Done():
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		u.pmu.Lock()
	}
	u.pw.Close()
	u.pmu.Unlock()
	return waitUpdate(ctx, u)
}

// pushOffset is OTA.Status's "offset" (an emulator extension): the offset
// the next OTA.Write must carry, while a push runs. d.mu is held.
func (d *Device) pushOffsetLocked() (int64, bool) {
	u := d.upd
	if u == nil || !u.push {
		return 0, false
	}
	u.pmu.Lock()
	defer u.pmu.Unlock()
	return u.next, true
}
