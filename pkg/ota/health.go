package ota

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/otactl/otactl/pkg/ota/wire"
	"github.com/otactl/otactl/pkg/rpc"
)

// DefaultHealthGrace is how long a health-check method may keep failing
// (or not answering) before the new firmware counts as unhealthy: a
// firmware often needs a while after boot to join its network, read its
// sensors, or register its handlers.
const DefaultHealthGrace = 30 * time.Second

// HealthOptions configure a health check: Method is called without
// arguments, again and again, until it answers without error or Grace has
// passed since the first call.
type HealthOptions struct {
	// Method is the RPC method to call; empty means no health check.
	Method string
	// Grace is how long failures are retried (default DefaultHealthGrace).
	Grace time.Duration
	// Interval is the pause between tries (default 1 s).
	Interval time.Duration
	// CallTimeout bounds each call (default 5 s); the last try starts
	// within the grace period and may end up to CallTimeout after it.
	CallTimeout time.Duration
	// Device, if set, is the device to commit: CommitAfterHealthCheck
	// reads Sys.GetInfo right before OTA.Commit and commits nothing when
	// another device answers (*DeviceChangedError).
	Device Identity
	// OnEvent, if set, gets EventHealthCheck for each try.
	OnEvent func(Event)
}

func (h *HealthOptions) defaults() {
	if h.Grace <= 0 {
		h.Grace = DefaultHealthGrace
	}
	if h.Interval <= 0 {
		h.Interval = time.Second
	}
	if h.CallTimeout <= 0 {
		h.CallTimeout = 5 * time.Second
	}
}

// HealthError is the error of a health check that never passed: it wraps
// ErrUpdateFailed, ErrHealthCheck and the last failure.
type HealthError struct {
	Method string
	Grace  time.Duration
	Tries  int
	Last   error
}

func (e *HealthError) Error() string {
	tries := "1 try"
	if e.Tries != 1 {
		tries = fmt.Sprintf("%d tries", e.Tries)
	}
	return fmt.Sprintf("%v: %s did not answer without error within %s (%s; last: %v)", ErrHealthCheck, e.Method, e.Grace, tries, e.Last)
}

// Unwrap returns ErrUpdateFailed, ErrHealthCheck and the last failure.
func (e *HealthError) Unwrap() []error { return []error{ErrUpdateFailed, ErrHealthCheck, e.Last} }

// CheckHealth calls h.Method until it answers without error (it returns
// the number of tries and nil) or h.Grace has passed since the first call
// (a *HealthError). An RPC error, no answer in time, or a dropped link all
// count as "not healthy yet". Wrong credentials end it at once (the check
// cannot pass). If ctx ends first, its error is returned.
func (d *Device) CheckHealth(ctx context.Context, h HealthOptions) (int, error) {
	if h.Method == "" {
		return 0, nil
	}
	h.defaults()
	end := time.Now().Add(h.Grace)
	var last error
	for tries := 1; ; tries++ {
		emit(h.OnEvent, Event{Kind: EventHealthCheck, Attempt: tries, Err: last,
			Msg: fmt.Sprintf("health check: calling %s (try %d)", h.Method, tries)})
		// A try starts within the grace period and gets its whole
		// CallTimeout: a late answer is an answer.
		cctx, cancel := context.WithTimeout(ctx, h.CallTimeout)
		_, err := d.c.Call(cctx, h.Method, nil)
		cancel()
		if err == nil {
			return tries, nil
		}
		if ctx.Err() != nil {
			return tries, ctx.Err()
		}
		last = err
		var dc *DeviceChangedError
		if err := h.Device.srcChanged(d.c, err); errors.As(err, &dc) {
			return tries, err // another device answers: not a health verdict
		}
		if errors.Is(err, rpc.ErrAuth) || isCode(err, 401) {
			return tries, &HealthError{Method: h.Method, Grace: h.Grace, Tries: tries, Last: err}
		}
		if time.Until(end) <= 0 {
			return tries, &HealthError{Method: h.Method, Grace: h.Grace, Tries: tries, Last: err}
		}
		if err := sleep(ctx, min(h.Interval, time.Until(end))); err != nil {
			return tries, err
		}
	}
}

// RevertAndWait abandons the firmware on trial that c is connected to:
// it reads the device (the reference), calls OTA.Revert, closes c, and
// waits (opts.Dial, bounded by ctx and opts.RebootTimeout, default 15 s)
// until the device answers after its reboot. The outcome is RolledBack
// when it runs its revert slot, committed; NotApplied when it did not
// reboot in time. Other fields of opts are as for WaitOutcome (Before and
// Accepted are set here). If OTA.Revert is refused because the firmware is
// already committed (it fell back by itself, or committed itself), the
// error wraps ErrAlreadyCommitted and nothing was reverted.
func RevertAndWait(ctx context.Context, c *rpc.Client, opts WaitOptions) (*Outcome, *rpc.Client, error) {
	d := New(c)
	ref, err := d.Observe(ctx)
	if err != nil {
		err = opts.Device.srcChanged(c, err)
	}
	if err == nil {
		err = opts.Device.Check(ref.Info) // never revert another device
	}
	if err == nil {
		err = d.Revert(ctx)
	}
	c.Close()
	if err != nil {
		return nil, nil, err
	}
	if opts.RebootTimeout <= 0 {
		opts.RebootTimeout = 15 * time.Second
	}
	opts.Before, opts.Accepted = ref, false
	if opts.Device.IsZero() {
		opts.Device = IdentityOf(ref.Info)
	}
	out, nc, err := WaitOutcome(ctx, opts)
	if out == nil {
		return nil, nil, err
	}
	back := out.Result != NotApplied && out.After.ActiveSlot == ref.Boot.RevertSlot && out.After.IsCommitted
	switch {
	case back:
		out.Result, out.Reason = RolledBack, ReasonRolledBack
		out.Message = fmt.Sprintf("reverted: slot %d runs %s again, committed", out.After.ActiveSlot, out.Info.Firmware())
		return out, nc, out.Err()
	case out.Result == NotApplied:
		out.Message = fmt.Sprintf("%s was accepted but the device did not reboot within %s; it runs %s in slot %d, and boots slot %d next", wire.OTARevert, opts.RebootTimeout, out.Info.Firmware(), out.After.ActiveSlot, out.After.ActiveSlot)
		return out, nc, fmt.Errorf("%w: %s", ErrUpdateFailed, out.Message)
	}
	out.Message = fmt.Sprintf("after OTA.Revert the device runs %s in slot %d (committed=%t), not its revert slot %d", out.Info.Firmware(), out.After.ActiveSlot, out.After.IsCommitted, ref.Boot.RevertSlot)
	return out, nc, fmt.Errorf("%w: %s", ErrUpdateFailed, out.Message)
}
