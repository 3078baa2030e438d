package ota

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/otactl/otactl/internal/human"
	"github.com/otactl/otactl/pkg/ota/wire"
	"github.com/otactl/otactl/pkg/rpc"
)

// pusher carries one push from its first OTA.Write to OTA.End: the writes
// in flight, what the device confirmed, and the link (which it may replace
// when the old one is lost).
type pusher struct {
	dev     *Device     // current link
	own     *rpc.Client // the current link when Push dialed it, to close
	opts    PushOptions // with defaults
	r       io.ReaderAt // the bundle
	size    int64       // bundle size
	res     *PushResult // filled in as the push goes
	begunAt time.Time   // OTA.Begin's reply: a device that booted later was reset
	buf     []byte      // one chunk, read before it is encoded

	acked   int64 // the device confirmed every byte below
	sentEnd int64 // the end of the furthest write sent
	// stalls counts recoveries in a row that found the device no further
	// than the one before; stallAt is acked at the last recovery.
	stalls  int
	stallAt int64
	// finished: an abort's OTA.End found the whole bundle on the device,
	// which finalised it.
	finished bool
}

// starter is implemented by *rpc.Client: it sends a request and returns
// before the reply, so that writes in flight leave in order.
type starter interface {
	Start(ctx context.Context, method string, params any) *rpc.Pending
}

// flight is one OTA.Write on its way. Its reply is awaited from the
// start, so that a later write's 418 is seen while an earlier one is still
// unanswered (pusher.await).
type flight struct {
	off    int64
	n      int
	base   int64 // what the device had confirmed when it was sent
	t0     time.Time
	done   chan struct{} // closed once err is set
	err    error
	cancel context.CancelFunc // gives up on the reply
}

// shutdownWait is how long the writes still in flight get once the device
// answered one of them 418 "shutting down in N ms": it reboots within N ms
// (at most 100, MGOS_RPC_REBOOT_LOCKOUT_MS), so a reply that has not come
// by then plus the time a reply takes on its way never will.
const shutdownWait = 2 * time.Second

// probeAfter is how long the oldest write in flight may go unanswered
// before Push asks the device where it stands (OTA.Status, Sys.GetInfo),
// and again each time as long after. Over MQTT nothing else tells that the
// device went away: the link stays up while it reboots or is off, and its
// writes would each wait for their timeout (60 s for the first one).
const probeAfter = 5 * time.Second

// window is one run of writes in flight, from the start of the transfer
// or a recovery to the next failure.
type window struct {
	once     sync.Once
	down     chan struct{} // closed once the device is known to be going or gone
	deadline time.Time     // set before down is closed
}

func newWindow() *window { return &window{down: make(chan struct{})} }

// goingDown records that the device is going away: the writes in flight
// get until now+grace to be answered.
func (w *window) goingDown(grace time.Duration) {
	w.once.Do(func() {
		w.deadline = time.Now().Add(grace)
		close(w.down)
	})
}

// await returns f's result: its reply, or no reply once the device is
// known to have gone (a write of the window answered 418 and
// shutdownWait passed, or a probe found the update ended: the device was
// reset, or its update stopped).
func (p *pusher) await(ctx context.Context, w *window, f *flight) error {
	probe := time.NewTimer(probeAfter)
	defer probe.Stop()
	for {
		select {
		case <-f.done:
			return f.err
		case <-probe.C:
			if p.updateGone(ctx) {
				w.goingDown(0)
			}
			probe.Reset(probeAfter)
			continue
		case <-w.down:
		}
		t := time.NewTimer(time.Until(w.deadline))
		defer t.Stop()
		select {
		case <-f.done:
		case <-t.C:
			f.cancel()
			<-f.done
		}
		return f.err
	}
}

// updateGone probes the device while writes wait for their replies: true
// when it answers and no longer runs this push's update (reset since
// OTA.Begin, or its update ended). No answer tells nothing.
func (p *pusher) updateGone(ctx context.Context) bool {
	st, rebooted, err := p.probe(ctx)
	var dc *DeviceChangedError
	return (err == nil && (rebooted || st.State != StateProgress)) || errors.As(err, &dc)
}

// report passes confirmed progress on; the last byte is reported only once
// OTA.End succeeded.
func (p *pusher) report(sent int64) {
	if p.opts.Progress != nil {
		p.opts.Progress(sent, p.size)
	}
}

// confirm records that the device holds every byte below end.
func (p *pusher) confirm(end int64) {
	if end <= p.acked {
		return
	}
	p.acked = end
	if end < p.size {
		p.report(end)
	}
}

// start reads the chunk at off and sends its OTA.Write, as part of w.
func (p *pusher) start(ctx context.Context, w *window, off int64) (*flight, error) {
	n := int(min(int64(p.opts.ChunkSize), p.size-off))
	if k, err := p.r.ReadAt(p.buf[:n], off); k < n {
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("reading the bundle: %w", err)
	}
	params := wire.WriteArgs{Offset: off, Data: base64.StdEncoding.EncodeToString(p.buf[:n])}
	timeout := p.opts.WriteTimeout
	if off == 0 {
		timeout = p.opts.FirstWriteTimeout // the device erases flash first
	}
	if off < p.sentEnd {
		p.res.Retries++
	}
	p.sentEnd = max(p.sentEnd, off+int64(n))
	wctx, cancel := context.WithTimeout(ctx, timeout)
	f := &flight{off: off, n: n, base: p.acked, t0: time.Now(), done: make(chan struct{}), cancel: cancel}
	var wait func() error
	if s, ok := p.dev.c.(starter); ok {
		pend := s.Start(wctx, wire.OTAWrite, params)
		wait = func() error {
			_, err := pend.Wait()
			return err
		}
	} else {
		c := p.dev.c
		wait = func() error {
			_, err := c.Call(wctx, wire.OTAWrite, params)
			return err
		}
	}
	go func() {
		defer close(f.done)
		defer cancel()
		f.err = wait()
		if isCode(f.err, CodeShuttingDown) {
			w.goingDown(shutdownWait)
		}
	}()
	return f, nil
}

// trouble is what the writes in flight said when one of them failed.
type trouble struct {
	off      int64 // the first failed write
	first    error // its error
	took     time.Duration
	fatal    error // a device error that ends the push
	fatalOff int64
	linkErr  error // a write got no reply, or the device is rebooting
	// expected is the largest offset the device named as expected
	// ("Wrong offset N, expected M"); -1 if none. backwards: one was
	// below what the device had confirmed when that write was sent, which
	// the device's own update never does.
	expected  int64
	backwards bool
}

func (t *trouble) add(p *pusher, f *flight, err error) {
	if err == nil {
		p.confirm(f.off + int64(f.n))
		return
	}
	if t.first == nil {
		t.off, t.first, t.took = f.off, err, time.Since(f.t0)
	}
	switch m, ok := expectedOffset(err); {
	case ok:
		t.expected = max(t.expected, m)
		t.backwards = t.backwards || m < f.base
	case isTransient(err):
		if t.linkErr == nil {
			t.linkErr = err
		}
	case t.fatal == nil:
		t.fatal, t.fatalOff = err, f.off
	}
}

// isTransient reports whether a failed call may succeed later: no reply
// (link lost, timeout, an answer that was not a readable reply) or the
// device about to reboot (418, "shutting down"), as opposed to a device's
// answer about the call, or more than one device answering (sticky: no
// retry cures it).
func isTransient(err error) bool {
	if errors.Is(err, rpc.ErrDuplicateReply) {
		return false
	}
	return !isDeviceError(err) || isCode(err, wire.CodeShuttingDown)
}

// transfer sends the whole bundle, window writes at a time.
func (p *pusher) transfer(ctx context.Context) error {
	var inflight []*flight
	next := int64(0)
	w := newWindow()
	for p.acked < p.size {
		for len(inflight) < p.opts.Window && next < p.size {
			f, err := p.start(ctx, w, next)
			if err != nil {
				t := &trouble{expected: -1}
				for _, g := range inflight {
					t.add(p, g, p.await(ctx, w, g))
				}
				return p.fail(ctx, next, err)
			}
			inflight = append(inflight, f)
			next += int64(f.n)
		}
		f := inflight[0]
		inflight = inflight[1:]
		err := p.await(ctx, w, f)
		if err == nil {
			p.confirm(f.off + int64(f.n))
			continue
		}
		// A write failed: hear what the others in flight say, then find
		// out where the device stands.
		t := &trouble{expected: -1}
		t.add(p, f, err)
		for _, g := range inflight {
			t.add(p, g, p.await(ctx, w, g))
		}
		inflight = nil
		w = newWindow()
		if next, err = p.recover(ctx, t); err != nil || p.finished {
			return err
		}
	}
	return nil
}

// recover decides where to go on after the failure t, and returns that
// offset, or the error that ends the push.
func (p *pusher) recover(ctx context.Context, t *trouble) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, p.fail(ctx, p.acked, fmt.Errorf("%w (%v)", err, t.first))
	}
	if t.fatal != nil {
		return 0, p.refused(ctx, t.fatalOff, t.fatal)
	}
	if p.acked > p.stallAt {
		p.stalls = 0
	}
	p.stallAt = p.acked
	if p.stalls++; p.stalls >= p.opts.Tries {
		return 0, p.fail(ctx, p.acked, t.first)
	}
	attempt := p.stalls + 1
	if t.linkErr == nil {
		// Only refusals naming the expected offset: the device held
		// every byte below it when it answered. (An offset below what it
		// confirmed since is only stale, as replies to writes in flight
		// come in any order; one below what it had confirmed when the
		// write was sent is not.)
		if t.expected > p.sentEnd || t.backwards {
			return 0, p.lost(ctx, &UpdateLostError{Offset: p.acked, Size: p.size, Other: true,
				Err: fmt.Errorf("the device expects offset %d, which this push's update never does (it had confirmed %d and was sent %d bytes)", t.expected, p.acked, p.sentEnd)})
		}
		p.confirm(t.expected)
		if p.acked < p.sentEnd {
			p.retryEvent(t, attempt)
		}
		return p.acked, nil
	}
	// No reply: a lost reply on a live link, a lost link, or a device
	// about to reboot.
	if p.opts.Redial == nil {
		// A try that failed at once waits a moment, so that the tries
		// span more than a glitch of a link that comes back by itself.
		if pause := retryPause << (attempt - 2); t.took < pause {
			if err := sleep(ctx, pause-t.took); err != nil {
				return 0, p.fail(ctx, p.acked, fmt.Errorf("%w (%v)", err, t.first))
			}
		}
	}
	st, rebooted, redialed, err := p.resync(ctx, t.linkErr)
	var dc *DeviceChangedError
	switch {
	case err == nil:
	case errors.As(err, &dc):
		return 0, p.changed(dc)
	case ctx.Err() != nil:
		return 0, p.fail(ctx, p.acked, fmt.Errorf("%w (%v)", ctx.Err(), t.first))
	case errors.Is(err, ErrLinkLost):
		return 0, p.gaveUp(ctx, err)
	case p.opts.Redial == nil && isTransient(err):
		// The link is not back (yet): try the write again.
		p.retryEvent(t, attempt)
		return p.acked, nil
	default:
		return 0, p.fail(ctx, p.acked, err)
	}
	switch {
	case rebooted:
		return 0, p.lost(ctx, &UpdateLostError{Offset: p.acked, Size: p.size, Rebooted: true, Status: st, Err: t.first})
	case st.State != StateProgress:
		return 0, p.lost(ctx, &UpdateLostError{Offset: p.acked, Size: p.size, Status: st, Err: t.first})
	}
	off := p.acked
	if st.Offset != nil {
		off = *st.Offset
		if off < p.acked || off > p.sentEnd {
			return 0, p.lost(ctx, &UpdateLostError{Offset: p.acked, Size: p.size, Other: true, Status: st,
				Err: fmt.Errorf("%s says the device expects offset %d, but it had confirmed %d and was sent %d bytes: it is not this push's update", wire.OTAStatus, off, p.acked, p.sentEnd)})
		}
		p.confirm(off)
	}
	if redialed {
		p.res.Resumes++
		emit(p.opts.OnEvent, Event{Kind: EventResumed, Sent: off, Total: p.size, Attempt: attempt, Err: t.first,
			Msg: fmt.Sprintf("link back; the device still runs the update and expects offset %d of %d: resuming", off, p.size)})
	} else if off < p.sentEnd {
		p.retryEvent(t, attempt)
	}
	return off, nil
}

func (p *pusher) retryEvent(t *trouble, attempt int) {
	emit(p.opts.OnEvent, Event{Kind: EventRetry, Sent: p.acked, Total: p.size, Attempt: attempt, Err: t.first,
		Msg: fmt.Sprintf("write at offset %d failed (%v); retrying from offset %d, attempt %d of %d", t.off, t.first, p.acked, attempt, p.opts.Tries)})
}

// resync reads OTA.Status (and, for evidence of a reset, Sys.GetInfo),
// regaining the link first if it is lost: with backoff, each attempt
// bounded by AttemptTimeout, all of it by ReconnectTimeout. Without Redial
// it tries once. It reports whether the device was reset since OTA.Begin,
// and whether the link was replaced. Its error is ctx's, one wrapping
// ErrLinkLost, the transient error of the one try without Redial, or one
// that no retry cures (the device refuses OTA.Status, credentials).
func (p *pusher) resync(ctx context.Context, cause error) (st Status, rebooted, redialed bool, err error) {
	rctx, cancel := context.WithTimeout(ctx, p.opts.ReconnectTimeout)
	defer cancel()
	delay := p.opts.Backoff.Initial
	lastErr := cause
	for attempt := 1; ; attempt++ {
		if p.dev == nil {
			actx, acancel := context.WithTimeout(rctx, p.opts.AttemptTimeout)
			c, derr := p.opts.Redial(actx)
			acancel()
			switch {
			case derr == nil:
				p.dev, p.own, redialed = New(c), c, true
			case errors.Is(derr, rpc.ErrAuth):
				return st, false, redialed, fmt.Errorf("reconnecting: %w", derr)
			default:
				lastErr = derr
			}
		}
		if p.dev != nil {
			st, rebooted, err = p.probe(rctx)
			if err == nil {
				return st, rebooted, redialed, nil
			}
			var dc *DeviceChangedError
			if errors.As(err, &dc) {
				return st, false, redialed, err
			}
			if !isTransient(err) {
				// The device answers, but not OTA.Status: no way to
				// know where it stands.
				return st, false, redialed, fmt.Errorf("reading OTA.Status to resume: %w", err)
			}
			lastErr = err
			if p.opts.Redial == nil {
				return st, false, redialed, err
			}
			if !isCode(err, wire.CodeShuttingDown) {
				p.drop()
			}
		}
		if err := ctx.Err(); err != nil {
			return st, false, redialed, err
		}
		emit(p.opts.OnEvent, Event{Kind: EventReconnecting, Sent: p.acked, Total: p.size, Attempt: attempt, Err: lastErr,
			Msg: fmt.Sprintf("lost the link at offset %d (%v); reconnecting (attempt %d)", p.acked, lastErr, attempt)})
		if sleep(rctx, delay) != nil {
			if err := ctx.Err(); err != nil {
				return st, false, redialed, err
			}
			return st, false, redialed, fmt.Errorf("%w within %s (last error: %v)", ErrLinkLost, p.opts.ReconnectTimeout, lastErr)
		}
		delay = min(2*delay, p.opts.Backoff.Max)
	}
}

// probe reads OTA.Status, and Sys.GetInfo for evidence of a reset: a
// device whose uptime says it booted after OTA.Begin's reply was reset.
func (p *pusher) probe(ctx context.Context) (Status, bool, error) {
	actx, cancel := context.WithTimeout(ctx, p.opts.AttemptTimeout)
	defer cancel()
	st, err := p.dev.Status(actx)
	if err != nil {
		return st, false, p.opts.Device.srcChanged(p.dev.c, err)
	}
	info, err := p.dev.GetInfo(actx)
	err = p.opts.Device.srcChanged(p.dev.c, err)
	var dc *DeviceChangedError
	switch {
	case errors.As(err, &dc):
		return st, false, err
	case err == nil:
	case isTransient(err):
		return st, false, err
	default:
		return st, false, nil // no Sys.GetInfo: no evidence either way
	}
	if err := p.opts.Device.Check(info); err != nil {
		return st, false, err
	}
	if info.Uptime <= 0 {
		return st, false, nil
	}
	booted := time.Now().Add(-secondsDur(info.Uptime))
	return st, booted.After(p.begunAt.Add(uptimeSlack)), nil
}

// drop closes the current link before dialing a new one (a serial port
// allows one user).
func (p *pusher) drop() {
	if p.dev == nil {
		return
	}
	if p.own != nil {
		p.own.Close()
		p.own = nil
	} else if cl, ok := p.dev.c.(io.Closer); ok {
		cl.Close()
	}
	p.dev = nil
}

func (p *pusher) closeOwn() {
	if p.own != nil {
		p.own.Close()
		p.own = nil
	}
}

// gaveUp ends a push whose link did not come back within
// ReconnectTimeout (err wraps ErrLinkLost). When nothing can be sent to the
// device, its watchdog ends the update.
func (p *pusher) gaveUp(ctx context.Context, err error) error {
	err = fmt.Errorf("%w: %w", err, context.DeadlineExceeded)
	if p.dev == nil {
		emit(p.opts.OnEvent, Event{Kind: EventAbort, Sent: p.acked, Total: p.size, Err: err,
			Msg: "giving up: the device's update watchdog ends the update; the boot state stays unchanged"})
		return &PushError{Offset: p.acked, Err: err, Unreached: true}
	}
	return p.fail(ctx, p.acked, err)
}

// fail ends a push that failed at off: it aborts the update with OTA.End
// and returns the *PushError, unless OTA.End succeeds, which means the
// device had the whole bundle after all (the last chunk landed, only its
// replies were lost) and finalised it.
func (p *pusher) fail(ctx context.Context, off int64, cause error) error {
	if p.dev == nil {
		return &PushError{Offset: off, Err: cause, Rejected: isDeviceError(cause), Unreached: true}
	}
	endErr := p.dev.abort(ctx, p.opts, off, p.size, cause)
	if endErr == nil {
		p.res.Chunks = int((p.size + int64(p.opts.ChunkSize) - 1) / int64(p.opts.ChunkSize))
		p.res.Confirmed = true
		p.finished = true
		p.report(p.size)
		emit(p.opts.OnEvent, Event{Kind: EventAccepted, Sent: p.size, Total: p.size,
			Msg: "the device had the whole bundle, accepted the update and is rebooting"})
		return nil
	}
	return &PushError{Offset: off, Err: cause, Rejected: isDeviceError(cause), Aborted: isDeviceError(endErr)}
}

// refused ends a push whose write the device refused for good. A device
// that was reset meanwhile refuses writes too ("Update not started", over
// a link such as HTTP that did not notice the reset): that is a lost
// update, not a refused bundle.
func (p *pusher) refused(ctx context.Context, off int64, err error) error {
	st, rebooted, perr := p.probe(ctx)
	if perr == nil && (rebooted || st.State == StateIdle) {
		return p.lost(ctx, &UpdateLostError{Offset: p.acked, Size: p.size, Rebooted: rebooted, Status: st, Err: err})
	}
	var dc *DeviceChangedError
	if errors.As(perr, &dc) {
		return p.changed(dc)
	}
	return p.fail(ctx, off, err)
}

// lost reports a push whose update the device no longer runs.
func (p *pusher) lost(_ context.Context, e *UpdateLostError) error {
	emit(p.opts.OnEvent, Event{Kind: EventAbort, Sent: p.acked, Total: p.size, Err: e, Msg: e.Error()})
	return e
}

// changed ends a push that found another device at the port: it closes
// the link and sends that device nothing (an OTA.End would abort that
// device's own update). The update on the device it started with is cut
// before all its data was confirmed, so that device installed nothing: its
// update watchdog ends the update.
func (p *pusher) changed(dc *DeviceChangedError) error {
	dc.While = fmt.Sprintf("when the push resumed at offset %d of %d", p.acked, p.size)
	dc.NothingInstalled = true
	dc.Then = fmt.Sprintf("device %s was sent %d of %d bytes, so it cannot have installed the update: its update watchdog (--update-timeout %s) ends the update, its boot state unchanged; find it and check it with 'otactl status'",
		dc.Want, p.acked, p.size, human.Duration(p.opts.Timeout))
	p.drop()
	emit(p.opts.OnEvent, Event{Kind: EventAbort, Sent: p.acked, Total: p.size, Err: dc, Msg: dc.Error()})
	return dc
}

// end sends OTA.End once every byte was confirmed. With Redial, a link
// lost on the way is regained and, if the device still waits for the end
// of the data, OTA.End is sent again.
func (p *pusher) end(ctx context.Context) error {
	emit(p.opts.OnEvent, Event{Kind: EventFinalizing, Sent: p.size, Total: p.size,
		Msg: "all data sent; the device is verifying the bundle"})
	p.res.Chunks = int((p.size + int64(p.opts.ChunkSize) - 1) / int64(p.opts.ChunkSize))
	for try := 1; ; try++ {
		ectx, cancel := context.WithTimeout(ctx, p.opts.EndTimeout)
		_, err := p.dev.c.Call(ectx, wire.OTAEnd, nil)
		cancel()
		switch {
		case err == nil:
			p.report(p.size)
			emit(p.opts.OnEvent, Event{Kind: EventAccepted, Sent: p.size, Total: p.size,
				Msg: "the device accepted the update and is rebooting"})
			p.res.Confirmed = true
			return nil
		case ctx.Err() != nil:
			return fmt.Errorf("push: OTA.End: %w", err)
		case !isTransient(err):
			return fmt.Errorf("%w: the device rejected the bundle when finalising (OTA.End): %w; its boot state is unchanged", ErrUpdateFailed, err)
		}
		// No reply: the device is probably rebooting into the update. Only
		// if it is found still waiting for the end of the data (OTA.End
		// never reached it) is OTA.End sent again.
		if p.opts.Redial != nil && try < p.opts.Tries {
			st, rebooted, _, rerr := p.resync(ctx, err)
			if ctx.Err() != nil {
				return fmt.Errorf("push: OTA.End: %w", err)
			}
			var dc *DeviceChangedError
			if errors.As(rerr, &dc) {
				// OTA.End was sent to the first device and its reply
				// lost: it may have installed the update and rebooted.
				dc.While = "after OTA.End, whose reply was lost"
				dc.Then = fmt.Sprintf("device %s was sent the whole bundle and OTA.End: it may have installed the update and rebooted into it, uncommitted (it falls back unless committed); find it and check it with 'otactl bootstate'", dc.Want)
				p.drop()
				return dc
			}
			if rerr == nil && !rebooted && st.State == StateProgress && (st.Offset == nil || *st.Offset == p.size) {
				emit(p.opts.OnEvent, Event{Kind: EventRetry, Sent: p.size, Total: p.size, Attempt: try + 1, Err: err,
					Msg: fmt.Sprintf("%s got no reply (%v) and the device still waits for it: sending it again", wire.OTAEnd, err)})
				continue
			}
			if rerr == nil && !rebooted && st.State == StateError {
				return fmt.Errorf("%w: the update failed on the device (OTA.Status: %s) after all data was sent; its boot state is unchanged", ErrUpdateFailed, st.Msg)
			}
		}
		// Not reported as 100%: the device did not confirm.
		emit(p.opts.OnEvent, Event{Kind: EventNoReply, Err: err, Sent: p.size, Total: p.size,
			Msg: "no reply to OTA.End; the device is probably rebooting"})
		return nil
	}
}
