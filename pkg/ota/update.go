package ota

import (
	"context"
	"fmt"
	"sync"
	"time"
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
	params := struct {
		URL           string `json:"url"`
		CommitTimeout int64  `json:"commit_timeout"`
		Timeout       int64  `json:"timeout"`
	}{URL: args.URL, CommitTimeout: commitSeconds(args.CommitTimeout), Timeout: seconds(args.Timeout)}
	if args.URL == "" {
		return Accepted{}, fmt.Errorf("OTA.Update: no bundle URL given")
	}
	if err := CheckTimeouts(args.CommitTimeout, args.Timeout); err != nil {
		return Accepted{}, fmt.Errorf("OTA.Update: %w", err)
	}
	if params.Timeout == 0 {
		params.Timeout = seconds(DefaultUpdateTimeout)
	}

	var wg sync.WaitGroup
	stop := make(chan struct{})
	if args.OnEvent != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.pollProgress(ctx, stop, args)
		}()
	}
	_, err := d.c.Call(ctx, "OTA.Update", params)
	close(stop)
	wg.Wait()

	switch {
	case err == nil:
		emit(args.OnEvent, Event{Kind: EventDownload, Percent: 100, Msg: "download complete"})
		emit(args.OnEvent, Event{Kind: EventAccepted, Msg: "the device installed the update and is rebooting"})
		return Accepted{Confirmed: true}, nil
	case lostLink(ctx, err):
		emit(args.OnEvent, Event{Kind: EventNoReply, Err: err, Msg: "no reply to OTA.Update; the device is probably rebooting"})
		return Accepted{}, nil
	case !isDeviceError(err):
		// ctx ended first: the device was not heard to refuse anything and
		// carries on by itself.
		return Accepted{}, fmt.Errorf("no reply to OTA.Update in time; the device may still be downloading or installing the bundle (check with OTA.Status and OTA.GetBootState): %w", err)
	}
	return Accepted{}, d.rejected(ctx, "the device did not install the update from "+args.URL, err)
}

// pollProgress reports OTA.Status progress until stop is closed. Percent
// is capped at 99: only the reply says the device finished.
func (d *Device) pollProgress(ctx context.Context, stop <-chan struct{}, args UpdateArgs) {
	every := args.ProgressInterval
	if every <= 0 {
		every = time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	last := -1
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
		if err != nil || st.State != StateProgress {
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
