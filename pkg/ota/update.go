package ota

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/otactl/otactl/pkg/ota/wire"
)

// UpdateArgs are the arguments of Update.
type UpdateArgs struct {
	// URL is where the device downloads the bundle (http, https).
	URL string
	// CommitTimeout is how long the new firmware waits for Commit before
	// rolling back; zero means DefaultCommitTimeout, AutoCommit sends 0.
	CommitTimeout time.Duration
	// Timeout is the device's update watchdog; zero means
	// DefaultUpdateTimeout.
	Timeout time.Duration
	// OnEvent, if set, receives EventDownload (progress from OTA.Status,
	// polled every ProgressInterval while the device downloads),
	// EventAccepted and EventNoReply.
	OnEvent func(Event)
	// ProgressInterval defaults to 1 s.
	ProgressInterval time.Duration
}

// Accepted says how an update was handed over.
type Accepted struct {
	// Confirmed is true when the device replied success (it reboots ~100 ms
	// later); false when the reply never came because the link dropped or
	// the call timed out — the device is then probably rebooting, and
	// WaitOutcome tells what really happened.
	Confirmed bool `json:"confirmed"`
	// Finished is true when the reply did not come but OTA.Status showed
	// the update finished (state success) before the device rebooted: it
	// had installed it, so coming back on the old firmware is a rollback
	// (WaitOptions.Accepted).
	Finished bool `json:"finished,omitempty"`
}

// Update calls OTA.Update: the device downloads the bundle from args.URL,
// verifies and installs it in the inactive slot, replies, and reboots into
// it. The device defers its reply until the download finished, so ctx must
// allow minutes; old devices reply error code 0 "Update applied,
// finalizing", which is success.
//
// A refusal or a failed download is an error wrapping ErrUpdateFailed and
// the device's *rpc.Error; the boot state is then unchanged. A lost reply
// (link dropped, per-call deadline) is not an error: Accepted.Confirmed is
// false. Cancelling ctx returns ctx's error (the device carries on).
func (d *Device) Update(ctx context.Context, args UpdateArgs) (Accepted, error) {
	return d.update(ctx, args, nil)
}

// update is Update; info, when set, is the Sys.GetInfo answer the caller
// read from this device on this link just before (the identity check before
// OTA.Update), with no call in between: the baseline takes it rather than
// reading it again.
func (d *Device) update(ctx context.Context, args UpdateArgs, info *Observation) (Accepted, error) {
	params := wire.UpdateArgs{URL: args.URL, CommitTimeout: commitSeconds(args.CommitTimeout), Timeout: seconds(args.Timeout)}
	if args.URL == "" {
		return Accepted{}, fmt.Errorf("%s: no bundle URL given", wire.OTAUpdate)
	}
	if err := CheckTimeouts(args.CommitTimeout, args.Timeout); err != nil {
		return Accepted{}, fmt.Errorf("%s: %w", wire.OTAUpdate, err)
	}
	if params.Timeout == 0 {
		params.Timeout = seconds(DefaultUpdateTimeout)
	}

	base := d.readBaseline(ctx, info)
	start := time.Now()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	// The poller ends the call when the device shows, on evidence, that
	// the update is over without its reply having come (lost on the way,
	// or cut off by the reboot): otherwise otactl would wait the whole
	// update timeout.
	callCtx, endCall := context.WithCancelCause(ctx)
	defer endCall(nil)
	w := &replyWatch{base: base}
	wg.Add(1)
	go func() {
		defer wg.Done()
		d.pollProgress(ctx, stop, args, endCall, w)
	}()
	_, err := d.c.Call(callCtx, wire.OTAUpdate, params)
	close(stop)
	wg.Wait() // w is the poller's no more

	switch {
	case err == nil:
		emit(args.OnEvent, Event{Kind: EventDownload, Percent: 100, Msg: "download complete"})
		emit(args.OnEvent, Event{Kind: EventAccepted, Msg: "the device installed the update and is rebooting"})
		return Accepted{Confirmed: true}, nil
	case ctx.Err() == nil && errors.Is(context.Cause(callCtx), errReplyLost):
		return d.replyLost(ctx, args, w, start)
	case lostLink(ctx, err):
		emit(args.OnEvent, Event{Kind: EventNoReply, Err: err, Msg: "no reply to OTA.Update; the device is probably rebooting"})
		return Accepted{}, nil
	case !isDeviceError(err) && errors.Is(ctx.Err(), context.DeadlineExceeded):
		// otactl gives up waiting: say what the device still does.
		return d.gaveUp(ctx, args, time.Duration(params.Timeout)*time.Second, start, w, err)
	case !isDeviceError(err):
		// ctx was cancelled: the device was not heard to refuse anything
		// and carries on by itself.
		return Accepted{}, fmt.Errorf("no reply to OTA.Update; the device may still be downloading or installing the bundle (check with OTA.Status and OTA.GetBootState): %w", err)
	}
	return Accepted{}, d.rejected(ctx, "the device did not install the update from "+args.URL, err)
}

// errReplyLost ends an OTA.Update call whose reply cannot come any more.
var errReplyLost = errors.New(wire.OTAStatus + " shows the update over, but its reply did not come")

// replyGrace is how long the reply to OTA.Update may trail OTA.Status
// showing the update over (a failed update returns the updater to idle as
// it replies) before the reply counts as lost.
const replyGrace = 5 * time.Second

// baseline is what the device showed just before OTA.Update was sent:
// what pollProgress compares with, so that neither a device still
// connecting to the bundle server (OTA.Status idle) nor an earlier
// update's failure (OTA.Status keeps it until the next update starts) is
// taken for this update's end.
type baseline struct {
	status   Status
	statusOK bool
	info     Observation // Info and At; Boot unused
	infoOK   bool
}

// readBaseline reads OTA.Status and Sys.GetInfo, each under a short
// deadline; what could not be read stays unknown (old firmware has no
// OTA.Status), and the update goes ahead. info, when set, is a Sys.GetInfo
// answer read just before on the same link: it is taken as it is.
func (d *Device) readBaseline(ctx context.Context, info *Observation) baseline {
	var b baseline
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	st, err := d.Status(sctx)
	cancel()
	b.status, b.statusOK = st, err == nil
	if info != nil {
		b.info, b.infoOK = Observation{Info: info.Info, At: info.At}, true
		return b
	}
	ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
	got, err := d.GetInfo(ictx)
	cancel()
	if err == nil {
		b.info, b.infoOK = Observation{Info: got, At: time.Now()}, true
	}
	return b
}

// sameAs reports whether st is what the baseline showed (state and
// message).
func (b baseline) sameAs(st Status) bool {
	return b.statusOK && st.State == b.status.State && st.Msg == b.status.Msg
}

// replyWatch is pollProgress's record of one OTA.Update call; Update
// reads it once the poller has returned.
type replyWatch struct {
	base     baseline
	ran      bool // OTA.Status showed this update in progress or finished
	finished bool // ... finished (state success)
	changed  bool // OTA.Status showed something other than the baseline
	rebooted bool // the call was ended because the device rebooted meanwhile
}

// newFailure reports whether st is a failure of this update: the status
// showed the update running, or something other than the baseline,
// during the call. The baseline's own failure, unchanged, is an earlier
// update's.
func (w *replyWatch) newFailure(st Status) bool {
	return st.State == StateError && (w.ran || w.changed)
}

// pollProgress reports OTA.Status progress (with OnEvent) until stop is
// closed. Percent is capped at 99: only the reply says the device
// finished. It also watches for an update that ended without its reply
// reaching us, and ends the call (endCall(errReplyLost)) only on evidence
// (docs/protocol.md, "A lost reply to OTA.Update"):
//   - OTA.Status showed the update in progress or finished, then idle or
//     failed for replyGrace;
//   - OTA.Status shows a failure other than the baseline's, for
//     replyGrace;
//   - Sys.GetInfo, read at most every replyGrace while the status shows
//     nothing new, says the device rebooted since the baseline: other
//     firmware, an uptime reset, or back after being away (w.rebooted).
//
// Idle, or the baseline's failure, with none of these is a device still
// connecting to the bundle server (it shows no progress before data
// arrives), or one that never got the request: otactl keeps waiting.
func (d *Device) pollProgress(ctx context.Context, stop <-chan struct{}, args UpdateArgs, endCall context.CancelCauseFunc, w *replyWatch) {
	every := args.ProgressInterval
	if every <= 0 {
		every = time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	last := -1
	var overSince time.Time // since when OTA.Status shows the update over
	var wentAway time.Time  // when the device first did not answer
	var infoAt time.Time    // when Sys.GetInfo was last read
	for {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, every*5)
		st, err := d.Status(pctx)
		cancel()
		switch {
		case err != nil:
			// Away, or going (418): a reboot may cut the reply off;
			// what it shows once back counts.
			if (!isDeviceError(err) || isCode(err, CodeShuttingDown)) && wentAway.IsZero() {
				wentAway = time.Now()
			}
			overSince = time.Time{}
			continue
		case st.State == StateProgress || st.State == StateSuccess:
			overSince = time.Time{}
			w.ran, w.changed = true, true
			if st.State == StateSuccess {
				w.finished = true
			}
		default: // idle, or failed
			if !w.base.sameAs(st) {
				w.changed = true
			}
			if w.ran || w.newFailure(st) {
				if overSince.IsZero() {
					overSince = time.Now()
				} else if time.Since(overSince) >= replyGrace {
					endCall(errReplyLost)
					return
				}
				continue
			}
			overSince = time.Time{}
			if !w.base.infoOK || (!infoAt.IsZero() && time.Since(infoAt) < replyGrace) {
				continue
			}
			ictx, cancel := context.WithTimeout(ctx, every*5)
			info, err := d.GetInfo(ictx)
			cancel()
			if err != nil {
				continue
			}
			infoAt = time.Now()
			if rebootedSince(w.base.info, probe{info: info, at: infoAt}, wentAway) {
				w.rebooted = true
				endCall(errReplyLost)
				return
			}
			continue
		}
		if args.OnEvent == nil || st.State != StateProgress {
			continue
		}
		p := min(max(st.ProgressPercent, 0), 99)
		if p == last {
			continue
		}
		select {
		case <-stop: // the reply came while we polled: don't report stale progress after it
			return
		default:
		}
		last = p
		args.OnEvent(Event{Kind: EventDownload, Percent: p, Msg: fmt.Sprintf("downloading: %d%%", p)})
	}
}

// replyLost decides an OTA.Update whose reply did not come although the
// device showed the update over (pollProgress): a failure of this update
// is the verdict (ErrUpdateFailed, the device's reason); otherwise the
// update is handed over unconfirmed, as after a lost link, and
// WaitOutcome tells from the device what booted (the new firmware, or the
// old one with its boot state unchanged: not applied).
func (d *Device) replyLost(ctx context.Context, args UpdateArgs, w *replyWatch, start time.Time) (Accepted, error) {
	if !w.rebooted {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, serr := d.Status(sctx)
		cancel()
		if serr == nil && w.newFailure(st) {
			msg := st.Msg
			if msg == "" {
				msg = "no message"
			}
			return Accepted{}, WithReason(DeviceMessageReason(msg), fmt.Errorf("%w: the update failed on the device: %s (OTA.Status; its reply to OTA.Update was lost: none came within %s); its boot state is unchanged",
				ErrUpdateFailed, msg, time.Since(start).Round(time.Second)))
		}
	}
	msg := "no reply to OTA.Update, and OTA.Status shows no update running any more: the reply was lost; what the device booted tells the outcome"
	if w.rebooted {
		msg = "no reply to OTA.Update, and the device rebooted meanwhile (Sys.GetInfo): the reply was lost; what the device booted tells the outcome"
	}
	emit(args.OnEvent, Event{Kind: EventNoReply, Err: errReplyLost, Msg: msg})
	return Accepted{Finished: w.finished}, nil
}

// GaveUpError is Update's error when ctx's deadline passed before the
// device replied to OTA.Update: it says what the device was still doing
// (OTA.Status, read once more) and what ends that. It wraps the call's
// error (context.DeadlineExceeded).
type GaveUpError struct {
	// Waited is how long otactl waited for the reply.
	Waited time.Duration
	// Watchdog is the update timeout sent to the device; Started when the
	// update was requested.
	Watchdog time.Duration
	Started  time.Time
	// Status is OTA.Status read after giving up, nil if it could not be
	// read (StatusErr says why).
	Status    *Status
	StatusErr error
	// Leftover is true when Status is the failure OTA.Status already
	// showed before OTA.Update was sent, and nothing else was seen since:
	// an earlier update's, not this one's.
	Leftover bool
	Err      error
}

func (e *GaveUpError) Error() string {
	s := fmt.Sprintf("no reply to OTA.Update within %s: ", e.Waited.Round(time.Second))
	switch {
	case e.Status == nil:
		s += fmt.Sprintf("the device does not answer OTA.Status either (%v), so what it does is unknown. ", e.StatusErr)
	case e.Status.State == StateProgress:
		s += fmt.Sprintf("the device is still updating (OTA.Status: in progress, %d%%). ", e.Status.ProgressPercent)
	case e.Leftover:
		s += fmt.Sprintf("%s still shows the failure it showed before this update was sent (%s: an earlier update's), so whether this update started is unknown. ", wire.OTAStatus, e.Status.Msg)
	default:
		s += fmt.Sprintf("%s says %s. ", wire.OTAStatus, e.Status.State)
	}
	if e.Status != nil && e.Status.State == StateIdle {
		return s + "Either the update has not started downloading yet (a device shows no progress while it connects to the bundle server, or it never got the request), or it ended without its reply reaching otactl: check what runs with 'otactl bootstate'"
	}
	if e.Watchdog > 0 {
		end := e.Started.Add(e.Watchdog)
		if left := time.Until(end); left > 0 {
			s += fmt.Sprintf("Its update watchdog (--update-timeout %s, counted from the start of the update) ends it in about %s at the latest; ",
				e.Watchdog, left.Round(time.Second))
		} else {
			s += fmt.Sprintf("Its update watchdog (--update-timeout %s, counted from the start of the update) should have ended it %s ago: firmware whose watchdog only counts time without progress goes on for as long as data keeps trickling in; ",
				e.Watchdog, (-left).Round(time.Second))
		}
	}
	return s + "a reboot ends it at once ('otactl call Sys.Reboot'). Until it completes, the boot state stays unchanged; if it completes, the device reboots into the new firmware uncommitted, and falls back unless committed"
}

func (e *GaveUpError) Unwrap() error { return e.Err }

// gaveUp reads OTA.Status once more (under its own short deadline) after
// the wait for OTA.Update's reply ended. A failed update there is the
// verdict (ErrUpdateFailed); a finished one is handed over like a lost
// reply (WaitOutcome tells what booted); otherwise a *GaveUpError.
func (d *Device) gaveUp(ctx context.Context, args UpdateArgs, watchdog time.Duration, start time.Time, w *replyWatch, err error) (Accepted, error) {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	st, serr := d.Status(sctx)
	cancel()
	ge := &GaveUpError{Waited: time.Since(start), Watchdog: watchdog, Started: start, Err: err}
	if serr != nil {
		ge.StatusErr = serr
		return Accepted{}, ge
	}
	ge.Status = &st
	switch {
	case st.State == StateError && !w.newFailure(st) && w.base.sameAs(st):
		// The baseline's failure, and nothing else seen: not a verdict.
		ge.Leftover = true
		return Accepted{}, ge
	case st.State == StateError:
		msg := st.Msg
		if msg == "" {
			msg = "no message"
		}
		return Accepted{}, WithReason(DeviceMessageReason(msg), fmt.Errorf("%w: the update failed on the device: %s (OTA.Status; its reply to OTA.Update did not come within %s); its boot state is unchanged",
			ErrUpdateFailed, msg, ge.Waited.Round(time.Second)))
	case st.State == StateSuccess:
		emit(args.OnEvent, Event{Kind: EventNoReply, Err: err, Msg: "no reply to OTA.Update, but OTA.Status says it finished; the device is about to reboot"})
		return Accepted{}, nil
	}
	return Accepted{}, ge
}
