package ota

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/otactl/otactl/pkg/ota/wire"
	"github.com/otactl/otactl/pkg/rpc"
)

// Observation is what the device reported at one moment: taken before an
// update (Device.Observe) it is the reference WaitOutcome compares with.
type Observation struct {
	Info SysInfo   `json:"info"`
	Boot BootState `json:"boot_state"`
	// At is when the reply to Sys.GetInfo arrived (host clock): the moment
	// Info.Uptime refers to.
	At time.Time `json:"at"`
}

// Observe reads Sys.GetInfo and OTA.GetBootState.
func (d *Device) Observe(ctx context.Context) (Observation, error) {
	info, err := d.GetInfo(ctx)
	if err != nil {
		return Observation{}, err
	}
	at := time.Now()
	bs, err := d.GetBootState(ctx)
	if err != nil {
		return Observation{}, err
	}
	return Observation{Info: info, Boot: bs, At: at}, nil
}

// Result is the final outcome of an update.
type Result string

// Results. Only the Updated ones mean the update took.
const (
	// UpdatedUncommitted: the new firmware runs, on trial; it rolls back
	// at Outcome.CommitDeadline unless committed.
	UpdatedUncommitted Result = "updated_uncommitted"
	// UpdatedCommitted: the new firmware runs and is committed (commit
	// timeout 0: it committed itself at boot).
	UpdatedCommitted Result = "updated_committed"
	// RolledBack: the device rebooted and came back on its old firmware
	// (the new one crashed or failed at boot, or was reverted).
	RolledBack Result = "rolled_back"
	// NotApplied: the device did not switch: the update failed before
	// finalising, or the device never rebooted.
	NotApplied Result = "not_applied"
)

// Took reports whether the new firmware runs.
func (r Result) Took() bool { return r == UpdatedUncommitted || r == UpdatedCommitted }

// Outcome is what WaitOutcome found.
type Outcome struct {
	Result Result `json:"result"`
	// Before is the boot state before the update; After the one read once
	// the outcome was clear.
	Before BootState `json:"before"`
	After  BootState `json:"after"`
	// BeforeInfo and Info are Sys.GetInfo before and after.
	BeforeInfo SysInfo `json:"before_info"`
	Info       SysInfo `json:"info"`
	// CommitDeadline estimates when an uncommitted firmware rolls back
	// (the device's boot time plus its commit timeout); zero otherwise.
	CommitDeadline time.Time `json:"commit_deadline,omitzero"`
	// Reason is the stable code for the result (ReasonOK when the update
	// took); Message one sentence saying what happened and why we think so.
	Reason  Reason `json:"reason"`
	Message string `json:"message"`
	// Attempts counts connection attempts; Elapsed the time waited.
	Attempts int           `json:"attempts"`
	Elapsed  time.Duration `json:"elapsed_ns"`
}

// Err is nil when the update took, else an error wrapping ErrUpdateFailed
// that says what happened.
func (o *Outcome) Err() error {
	if o.Result.Took() {
		return nil
	}
	return WithReason(o.Reason, fmt.Errorf("%w: %s", ErrUpdateFailed, o.Message))
}

// Dialer opens a new RPC client to the device. WaitOutcome calls it once per
// connection attempt; ctx bounds the dial.
type Dialer func(ctx context.Context) (*rpc.Client, error)

// Backoff spaces connection attempts while the device is away: Initial,
// doubling up to Max.
type Backoff struct {
	Initial time.Duration // default 250 ms
	Max     time.Duration // default 5 s
}

// WaitOptions configure WaitOutcome.
type WaitOptions struct {
	// Dial connects to the device (required). Close any client of your own
	// first if the link allows only one at a time (serial).
	Dial Dialer
	// Before is Device.Observe from before the update (required).
	Before Observation
	// Accepted is true when the device confirmed the update (Update or
	// Push returned Accepted.Confirmed): from then on, seeing the old slot
	// active means it rolled back. False when the reply was lost.
	Accepted bool
	// Expect identifies the new firmware (bundle manifest version and
	// build_id), if known; it lets the new firmware be recognised even
	// when it booted from the same slot number.
	Expect Firmware
	// RebootTimeout is how long the device may keep running its old
	// instance, answering, before the outcome is NotApplied (default 2 m).
	// It counts from the start, or from the last time OTA.Status showed an
	// update in progress (a device still downloading has not failed). Give
	// ctx a little more than this, or the verdict never comes: ctx ends
	// the wait with an error first.
	RebootTimeout time.Duration
	// AttemptTimeout bounds the dial and each call of one attempt (default
	// 5 s). A link that stays open while the device reboots (serial) waits
	// this long for an answer before the attempt counts as failed.
	AttemptTimeout time.Duration
	// PollInterval spaces attempts while the device answers but has not
	// rebooted yet (default 500 ms).
	PollInterval time.Duration
	// Resend is how long an attempt's first call waits for an answer
	// before it sends the same call again, the first still pending
	// (default 1 s; at most AttemptTimeout in all). A request sent while
	// the device is away is lost, not queued — an MQTT message published
	// before the device subscribed again, a serial frame sent while it
	// boots — and would otherwise hold the attempt for AttemptTimeout.
	Resend time.Duration
	// Backoff spaces attempts while the device does not answer.
	Backoff Backoff
	// Device is the device waited for (zero: IdentityOf(Before.Info)).
	// Every attempt checks the first Sys.GetInfo answer against it: when
	// another device answers, WaitOutcome ends at once with a
	// *DeviceChangedError and no outcome.
	Device Identity
	// OnEvent, if set, gets EventWaiting, EventNotRebooted and EventBack.
	OnEvent func(Event)
}

func (o *WaitOptions) defaults() {
	if o.RebootTimeout <= 0 {
		o.RebootTimeout = 2 * time.Minute
	}
	if o.AttemptTimeout <= 0 {
		o.AttemptTimeout = 5 * time.Second
	}
	if o.PollInterval <= 0 {
		o.PollInterval = 500 * time.Millisecond
	}
	if o.Resend <= 0 {
		o.Resend = time.Second
	}
	if o.Backoff.Initial <= 0 {
		o.Backoff.Initial = 250 * time.Millisecond
	}
	if o.Backoff.Max < o.Backoff.Initial {
		o.Backoff.Max = max(5*time.Second, o.Backoff.Initial)
	}
	if o.Device.IsZero() {
		o.Device = IdentityOf(o.Before.Info)
	}
}

// uptimeSlack absorbs the rounding of whole-second uptimes and call latency
// when comparing boot times.
const uptimeSlack = 2 * time.Second

// probe is one successful look at the device, all of it answered by one
// boot of the device.
type probe struct {
	info     SysInfo
	boot     BootState
	status   Status
	statusOK bool
	at       time.Time // when info arrived
}

// describe says what the device reported, for a timeout error.
func (p probe) describe() string {
	s := fmt.Sprintf("it runs %s in slot %d", p.info.Firmware(), p.boot.ActiveSlot)
	if p.statusOK {
		s += "; OTA.Status: " + p.status.State.String()
		if p.status.State == StateProgress {
			s += fmt.Sprintf(", %d%%", p.status.ProgressPercent)
		}
	}
	return s
}

// CodeShuttingDown is the error code a Mongoose OS device answers every
// call with between scheduling its reboot and rebooting (~100 ms; the
// message says "shutting down in N ms"): it is about to go away.
const CodeShuttingDown = wire.CodeShuttingDown

// ErrShuttingDown is wrapped by the error of a wait attempt that the
// device answered with CodeShuttingDown: not back yet.
var ErrShuttingDown = errors.New("the device is shutting down to reboot")

// errRebootedDuringProbe fails an attempt whose calls were answered by two
// different boots of the device.
var errRebootedDuringProbe = errors.New("the device rebooted while it was being read")

// WaitOutcome waits for the device to reboot after an update and come back,
// then says what it booted. It reconnects with opts.Dial (backoff between
// attempts, each bounded by AttemptTimeout, the whole bounded by ctx) and
// reads Sys.GetInfo, OTA.GetBootState and OTA.Status until the outcome is
// clear:
//
//   - UpdatedUncommitted / UpdatedCommitted: after a reboot (uptime reset,
//     or the firmware identity changed) the active slot differs from before
//     or Sys.GetInfo shows opts.Expect;
//   - RolledBack: the old slot and firmware are active again after the
//     device rebooted, or at all once it had accepted the update;
//   - NotApplied: the device still runs its old instance and OTA.Status
//     shows a failed update, or it has not rebooted after RebootTimeout.
//
// A device that runs another firmware but boots its old slot next,
// committed, is about to fall back (its commit timer expired): that is
// waited out, and reported as RolledBack once it is back on its old
// firmware.
//
// On success it returns the Outcome and a client connected to the device
// (the caller closes it), e.g. for CommitAfterHealthCheck. For RolledBack
// and NotApplied it returns the Outcome, the client and o.Err() (wrapping
// ErrUpdateFailed). If ctx ends first it returns an error wrapping ctx's
// error and the last connection error; wrong credentials end it at once
// (rpc.ErrAuth).
func WaitOutcome(ctx context.Context, opts WaitOptions) (*Outcome, *rpc.Client, error) {
	if opts.Dial == nil {
		return nil, nil, errors.New("WaitOutcome: no dialer")
	}
	if opts.Before.At.IsZero() {
		return nil, nil, errors.New("WaitOutcome: no Before observation: call Device.Observe before the update")
	}
	opts.defaults()
	start := time.Now()
	var (
		wentAway time.Time // first failed attempt
		lastErr  error
		delay    = opts.Backoff.Initial
		attempts int
		// quietSince is when the RebootTimeout clock started: the start,
		// or the last time OTA.Status showed an update in progress (a
		// device still downloading is not "not rebooting").
		quietSince = start
		lastSeen   string // what the last undecided probe showed
		// finalized: the device confirmed the update, or was seen with it
		// finalized and its reboot pending; only then can coming back on
		// the old firmware be a rollback.
		finalized = opts.Accepted
	)
	for {
		attempts++
		c, p, err := attempt(ctx, opts)
		if err != nil {
			var dc *DeviceChangedError
			if errors.As(err, &dc) {
				// Another device answers: nothing it says tells what this
				// one did.
				if dc.While == "" {
					dc.While = fmt.Sprintf("waiting for the device to come back, attempt %d", attempts)
				}
				return nil, nil, err
			}
			if errors.Is(err, rpc.ErrAuth) || isCode(err, 401) || errors.Is(err, ErrBadReply) {
				return nil, nil, fmt.Errorf("reconnecting after the update: %w", err)
			}
			if ctx.Err() != nil {
				if lastErr == nil && lastSeen == "" {
					lastErr = err
				}
				return nil, nil, timeoutErr(ctx, attempts, lastErr, lastSeen)
			}
			lastErr = err
			if wentAway.IsZero() {
				// The link went away, or the device said it is shutting
				// down (418): a later answer comes from a new boot.
				wentAway = time.Now()
			}
			emit(opts.OnEvent, Event{Kind: EventWaiting, Attempt: attempts, Err: err,
				Msg: fmt.Sprintf("waiting for the device to come back (attempt %d): %v", attempts, err)})
			if err := sleep(ctx, delay); err != nil {
				return nil, nil, timeoutErr(ctx, attempts, lastErr, lastSeen)
			}
			delay = min(delay*2, opts.Backoff.Max)
			continue
		}
		delay = opts.Backoff.Initial
		if p.statusOK && p.status.State == StateProgress {
			quietSince = p.at
		}
		o := decide(opts, p, evidence{wentAway: wentAway, quietSince: quietSince, finalized: finalized})
		if o == nil && pendingReboot(opts.Before, p) {
			// Seen before its reboot: the device had finalized the update.
			finalized = true
		}
		if o != nil {
			o.Attempts, o.Elapsed = attempts, time.Since(start)
			emit(opts.OnEvent, Event{Kind: EventBack, Attempt: attempts, Info: &o.Info, Boot: &o.After,
				Msg: "the device answers: " + o.Message})
			return o, c, o.Err()
		}
		c.Close()
		lastErr, lastSeen = nil, p.describe()
		emit(opts.OnEvent, Event{Kind: EventNotRebooted, Attempt: attempts, Info: &p.info, Boot: &p.boot,
			Msg: "the device has not rebooted yet: " + lastSeen})
		if err := sleep(ctx, opts.PollInterval); err != nil {
			return nil, nil, timeoutErr(ctx, attempts, lastErr, lastSeen)
		}
	}
}

// timeoutErr says that ctx ended before the outcome was clear. lastErr is
// the last failed attempt's error when the device was away last, else
// lastSeen says what it reported.
func timeoutErr(ctx context.Context, attempts int, lastErr error, lastSeen string) error {
	cause := ctx.Err()
	if cause == nil {
		cause = context.DeadlineExceeded
	}
	if lastErr != nil {
		return fmt.Errorf("the device did not come back in time (%d attempts; last error: %v): %w", attempts, lastErr, cause)
	}
	if lastSeen == "" {
		lastSeen = "no answer yet"
	}
	return fmt.Errorf("no outcome in time (%d attempts; the device answered but had not rebooted: %s): %w", attempts, lastSeen, cause)
}

// attempt dials and probes once; on success the client stays open. The
// probe reads Sys.GetInfo first and last: if the two answers come from
// different boots (a reboot faster than a call), the attempt fails, so that
// no outcome mixes the old instance's firmware with the new one's state.
func attempt(ctx context.Context, opts WaitOptions) (*rpc.Client, probe, error) {
	step := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, opts.AttemptTimeout) }
	sctx, cancel := step()
	c, err := opts.Dial(sctx)
	cancel()
	if err != nil {
		return nil, probe{}, err
	}
	d := New(c)
	var p probe
	var first SysInfo
	var firstAt time.Time
	call := func(f func(ctx context.Context) error) error {
		sctx, cancel := step()
		defer cancel()
		return f(sctx)
	}
	first, err = firstInfo(ctx, d, opts)
	if err == nil {
		err = opts.Device.Check(first)
	}
	if err == nil {
		firstAt = time.Now()
		err = call(func(ctx context.Context) (err error) { p.boot, err = d.GetBootState(ctx); return err })
	}
	if err == nil {
		// OTA.Status is optional (old devices): without it, fewer clues.
		switch serr := call(func(ctx context.Context) (err error) { p.status, err = d.Status(ctx); return err }); {
		case serr == nil:
			p.statusOK = true
		case isCode(serr, CodeShuttingDown):
			err = serr
		}
		if err == nil {
			err = call(func(ctx context.Context) (err error) { p.info, err = d.GetInfo(ctx); return err })
		}
		if err == nil {
			err = opts.Device.Check(p.info)
		}
	}
	if err != nil {
		c.Close()
		if isCode(err, CodeShuttingDown) {
			err = fmt.Errorf("%w: %w", ErrShuttingDown, err)
		}
		return nil, probe{}, err
	}
	p.at = time.Now()
	if !sameBoot(first, firstAt, p.info, p.at) {
		c.Close()
		return nil, probe{}, errRebootedDuringProbe
	}
	return c, p, nil
}

// firstInfo is an attempt's first call, Sys.GetInfo: sent again every
// opts.Resend while no answer came (the device may have been away when
// the first was sent, and lost it), the calls in flight together, the
// first answer taken; the whole bounded by AttemptTimeout. A call that
// fails otherwise (link down, an error reply) ends it at once.
func firstInfo(ctx context.Context, d *Device, opts WaitOptions) (SysInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, opts.AttemptTimeout)
	type answer struct {
		info SysInfo
		err  error
	}
	n := int(opts.AttemptTimeout/opts.Resend) + 1
	answers := make(chan answer, n)
	var wg sync.WaitGroup
	defer func() {
		cancel() // the calls still in flight end at once
		wg.Wait()
	}()
	send := func() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			info, err := d.GetInfo(ctx)
			answers <- answer{info, err}
		}()
	}
	send()
	sent := 1
	resend := time.NewTicker(opts.Resend)
	defer resend.Stop()
	for {
		select {
		case a := <-answers:
			return a.info, a.err
		case <-resend.C:
			if sent < n {
				send()
				sent++
			}
		}
	}
}

// sameBoot reports whether two Sys.GetInfo answers, received at a and b,
// come from the same boot: same firmware, and the same boot time (arrival
// minus uptime) within uptimeSlack when the device reports its uptime.
func sameBoot(a SysInfo, aAt time.Time, b SysInfo, bAt time.Time) bool {
	if a.Firmware() != b.Firmware() {
		return false
	}
	if a.Uptime <= 0 && b.Uptime <= 0 {
		return true // no uptime to tell
	}
	diff := aAt.Add(-secondsDur(a.Uptime)).Sub(bAt.Add(-secondsDur(b.Uptime)))
	return diff.Abs() <= uptimeSlack
}

// evidence is what the wait saw besides the current probe.
type evidence struct {
	// wentAway is when an attempt first failed (link down, no answer, or
	// a 418 "shutting down"): an answer after it may come from a new boot.
	wentAway time.Time
	// quietSince starts the RebootTimeout clock.
	quietSince time.Time
	// finalized: the device confirmed the update (Accepted), or a probe
	// saw it finalized with its reboot pending. Without it, the device
	// never installed anything, so coming back on the old firmware is not
	// a rollback.
	finalized bool
}

// pendingReboot reports whether p shows an update finalized and waiting
// for its reboot: OTA.Status "success", or another slot set to boot next
// on trial, on the instance that was running before.
func pendingReboot(before Observation, p probe) bool {
	if p.statusOK && p.status.State == StateSuccess {
		return true
	}
	return p.boot.ActiveSlot != before.Boot.ActiveSlot && !p.boot.IsCommitted && p.info.Firmware() == before.Info.Firmware()
}

// rebootedSince reports whether p comes from a boot after the reference
// observation, on evidence only: the running firmware changed, the uptime
// says it booted later, or it answers after the link went away (and, when
// it reports an uptime, booted after that). A device that answers in its
// pre-reboot window, normally or not, shows none of these.
func rebootedSince(before Observation, p probe, wentAway time.Time) bool {
	oldFW, nowFW := before.Info.Firmware(), p.info.Firmware()
	if (oldFW.Version != nowFW.Version && oldFW.Version != "" && nowFW.Version != "") ||
		(oldFW.BuildID != nowFW.BuildID && oldFW.BuildID != "" && nowFW.BuildID != "") {
		return true
	}
	if p.info.Uptime > 0 || before.Info.Uptime > 0 {
		booted := p.at.Add(-secondsDur(p.info.Uptime))
		if booted.After(before.At.Add(-secondsDur(before.Info.Uptime)).Add(uptimeSlack)) {
			return true
		}
		return !wentAway.IsZero() && !booted.Before(wentAway.Add(-uptimeSlack))
	}
	return !wentAway.IsZero() // no uptime to tell: having been away must do
}

// decide returns the outcome that p shows, or nil to keep waiting.
func decide(opts WaitOptions, p probe, ev evidence) *Outcome {
	before := opts.Before
	o := &Outcome{Before: before.Boot, After: p.boot, BeforeInfo: before.Info, Info: p.info}
	oldFW, nowFW := before.Info.Firmware(), p.info.Firmware()
	idChanged := (oldFW.Version != nowFW.Version && oldFW.Version != "" && nowFW.Version != "") ||
		(oldFW.BuildID != nowFW.BuildID && oldFW.BuildID != "" && nowFW.BuildID != "")
	expected := opts.Expect.Matches(nowFW)
	newSlot := p.boot.ActiveSlot != before.Boot.ActiveSlot
	busy := p.statusOK && (p.status.State == StateProgress || p.status.State == StateSuccess)
	rebooted := rebootedSince(before, p, ev.wentAway)
	if busy && !idChanged {
		rebooted = false // an update is still running or waits for its reboot
	}
	// Another firmware than before runs, yet the device boots the old slot
	// next, committed, as it falls back (revert_slot = active_slot): after
	// an update it finalized, or with the new firmware running, that is the
	// commit timer that has just expired (or a revert), and the device is
	// about to reboot into its old firmware. Not an update that took: wait
	// for the reboot.
	rollingBack := idChanged && !newSlot && p.boot.IsCommitted && p.boot.RevertSlot == p.boot.ActiveSlot &&
		(ev.finalized || expected)

	switch {
	case rollingBack && time.Since(ev.quietSince) <= opts.RebootTimeout:
		return nil
	case rollingBack:
		o.Result, o.Reason = RolledBack, ReasonRolledBack
		o.Message = fmt.Sprintf("the device runs %s but boots slot %d next, committed (its commit timeout expired, or it was reverted), and did not reboot within %s", nowFW, p.boot.ActiveSlot, opts.RebootTimeout)
		return o
	case rebooted && (newSlot || (expected && idChanged) || (idChanged && opts.Expect.IsZero())):
		o.Result, o.Reason = UpdatedUncommitted, ReasonOK
		if p.boot.IsCommitted {
			o.Result = UpdatedCommitted
		}
		o.Message = fmt.Sprintf("slot %d runs %s", p.boot.ActiveSlot, nowFW)
		if o.Result == UpdatedCommitted {
			o.Message += ", committed"
		} else {
			o.Message += fmt.Sprintf(", not yet committed; it falls back to slot %d", p.boot.RevertSlot)
			if p.boot.CommitTimeout > 0 {
				o.CommitDeadline = p.at.Add(-secondsDur(p.info.Uptime)).Add(time.Duration(p.boot.CommitTimeout) * time.Second)
				o.Message += fmt.Sprintf(" at about %s unless committed", o.CommitDeadline.Format(time.TimeOnly))
			} else {
				o.Message += " when it reboots unless committed"
			}
		}
		if !opts.Expect.IsZero() && !expected {
			o.Message += fmt.Sprintf(" (expected %s)", opts.Expect)
		}
		return o
	case rebooted && idChanged:
		// A different firmware than expected on the old slot: not ours.
		o.Result, o.Reason = NotApplied, ReasonWrongFirmware
		o.Message = fmt.Sprintf("the device rebooted into %s in slot %d, not the expected %s", nowFW, p.boot.ActiveSlot, opts.Expect)
		return o
	case !newSlot && !busy && ev.finalized:
		// (Even without a reboot seen: it had finalized the update, so its
		// boot state pointed at the new slot; the old one active again
		// means it booted the new firmware and fell back faster than a
		// probe.)
		o.Result, o.Reason = RolledBack, ReasonRolledBack
		o.Message = fmt.Sprintf("the device came back on its old firmware %s in slot %d: the new firmware did not start or did not stay up, so the device rolled back", nowFW, p.boot.ActiveSlot)
		return o
	case !newSlot && !busy && rebooted:
		// It restarted before it finalized the update (a reset or power
		// loss during the download): nothing was installed.
		o.Result, o.Reason = NotApplied, ReasonDeviceReset
		o.Message = fmt.Sprintf("the device restarted before it had installed the update (it never confirmed it), and runs its old firmware %s in slot %d with its boot state unchanged", nowFW, p.boot.ActiveSlot)
		return o
	case !newSlot && !ev.finalized && p.statusOK && p.status.State == StateError:
		o.Result, o.Reason = NotApplied, DeviceMessageReason(p.status.Msg)
		msg := p.status.Msg
		if msg == "" {
			msg = "no message"
		}
		o.Message = fmt.Sprintf("the update failed on the device (%s); it still runs %s in slot %d", msg, nowFW, p.boot.ActiveSlot)
		return o
	case time.Since(ev.quietSince) > opts.RebootTimeout:
		o.Result, o.Reason = NotApplied, ReasonNoReboot
		o.Message = fmt.Sprintf("the device did not reboot within %s; it still runs %s in slot %d", opts.RebootTimeout, nowFW, p.boot.ActiveSlot)
		if newSlot {
			o.Message += fmt.Sprintf(" with slot %d set to boot next: reboot it to try the update", p.boot.ActiveSlot)
		}
		return o
	}
	return nil
}

func secondsDur(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
