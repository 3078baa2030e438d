package ota

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
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

	start := time.Now()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	// The poller ends the call when OTA.Status shows the update over
	// without its reply having come (lost on the way, or cut off by the
	// reboot): otherwise otactl would wait the whole update timeout.
	callCtx, endCall := context.WithCancelCause(ctx)
	defer endCall(nil)
	var finished atomic.Bool // OTA.Status showed the update finished
	wg.Add(1)
	go func() {
		defer wg.Done()
		d.pollProgress(ctx, stop, args, endCall, &finished)
	}()
	_, err := d.c.Call(callCtx, wire.OTAUpdate, params)
	close(stop)
	wg.Wait()

	switch {
	case err == nil:
		emit(args.OnEvent, Event{Kind: EventDownload, Percent: 100, Msg: "download complete"})
		emit(args.OnEvent, Event{Kind: EventAccepted, Msg: "the device installed the update and is rebooting"})
		return Accepted{Confirmed: true}, nil
	case ctx.Err() == nil && errors.Is(context.Cause(callCtx), errReplyLost):
		return d.replyLost(ctx, args, finished.Load(), start)
	case lostLink(ctx, err):
		emit(args.OnEvent, Event{Kind: EventNoReply, Err: err, Msg: "no reply to OTA.Update; the device is probably rebooting"})
		return Accepted{}, nil
	case !isDeviceError(err) && errors.Is(ctx.Err(), context.DeadlineExceeded):
		// otactl gives up waiting: say what the device still does.
		return d.gaveUp(ctx, args, time.Duration(params.Timeout)*time.Second, start, err)
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

// pollProgress reports OTA.Status progress (with OnEvent) until stop is
// closed. Percent is capped at 99: only the reply says the device
// finished. It also watches for an update that ended without its reply
// reaching us (docs/protocol.md, "A lost reply to OTA.Update"): while
// OTA.Update is outstanding, a device that has it shows it in progress,
// or finished until it reboots; OTA.Status idle or failed for replyGrace
// on end (the device rebooted, or the update failed, however fast, and the
// reply was lost, or the request never arrived) calls
// endCall(errReplyLost). finished is set once the status showed the
// update finished.
func (d *Device) pollProgress(ctx context.Context, stop <-chan struct{}, args UpdateArgs, endCall context.CancelCauseFunc, finished *atomic.Bool) {
	every := args.ProgressInterval
	if every <= 0 {
		every = time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	last := -1
	var idleSince time.Time // since when OTA.Status shows no update running
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
			idleSince = time.Time{}
			continue
		case st.State == StateProgress || st.State == StateSuccess:
			idleSince = time.Time{}
			if st.State == StateSuccess {
				finished.Store(true)
			}
		default: // idle, or failed
			if idleSince.IsZero() {
				idleSince = time.Now()
			} else if time.Since(idleSince) >= replyGrace {
				endCall(errReplyLost)
				return
			}
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

// replyLost decides an OTA.Update whose reply did not come although
// OTA.Status shows the update over (pollProgress): OTA.Status, read once
// more, failed is the verdict (ErrUpdateFailed, the device's reason);
// otherwise the update is handed over unconfirmed, as after a lost link,
// and WaitOutcome tells from the device what booted (the new firmware, or
// the old one with its boot state unchanged: not applied).
func (d *Device) replyLost(ctx context.Context, args UpdateArgs, finished bool, start time.Time) (Accepted, error) {
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	st, serr := d.Status(sctx)
	cancel()
	if serr == nil && st.State == StateError {
		msg := st.Msg
		if msg == "" {
			msg = "no message"
		}
		return Accepted{}, WithReason(DeviceMessageReason(msg), fmt.Errorf("%w: the update failed on the device: %s (OTA.Status; its reply to OTA.Update was lost: none came within %s); its boot state is unchanged",
			ErrUpdateFailed, msg, time.Since(start).Round(time.Second)))
	}
	emit(args.OnEvent, Event{Kind: EventNoReply, Err: errReplyLost, Msg: "no reply to OTA.Update, and OTA.Status shows no update running any more: the reply was lost; what the device booted tells the outcome"})
	return Accepted{Finished: finished}, nil
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
	Err       error
}

func (e *GaveUpError) Error() string {
	s := fmt.Sprintf("no reply to OTA.Update within %s: ", e.Waited.Round(time.Second))
	switch {
	case e.Status == nil:
		s += fmt.Sprintf("the device does not answer OTA.Status either (%v), so what it does is unknown. ", e.StatusErr)
	case e.Status.State == StateProgress:
		s += fmt.Sprintf("the device is still updating (OTA.Status: in progress, %d%%). ", e.Status.ProgressPercent)
	default:
		s += fmt.Sprintf("%s says %s. ", wire.OTAStatus, e.Status.State)
	}
	if e.Status != nil && e.Status.State == StateIdle {
		return s + "The update ended without its reply reaching otactl: check what runs with 'otactl bootstate'"
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
func (d *Device) gaveUp(ctx context.Context, args UpdateArgs, watchdog time.Duration, start time.Time, err error) (Accepted, error) {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	st, serr := d.Status(sctx)
	cancel()
	ge := &GaveUpError{Waited: time.Since(start), Watchdog: watchdog, Started: start, Err: err}
	if serr != nil {
		ge.StatusErr = serr
		return Accepted{}, ge
	}
	ge.Status = &st
	switch st.State {
	case StateError:
		msg := st.Msg
		if msg == "" {
			msg = "no message"
		}
		return Accepted{}, WithReason(DeviceMessageReason(msg), fmt.Errorf("%w: the update failed on the device: %s (OTA.Status; its reply to OTA.Update did not come within %s); its boot state is unchanged",
			ErrUpdateFailed, msg, ge.Waited.Round(time.Second)))
	case StateSuccess:
		emit(args.OnEvent, Event{Kind: EventNoReply, Err: err, Msg: "no reply to OTA.Update, but OTA.Status says it finished; the device is about to reboot"})
		return Accepted{}, nil
	}
	return Accepted{}, ge
}
