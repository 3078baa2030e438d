package ota

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/otactl/otactl/internal/human"
	"github.com/otactl/otactl/pkg/ota/bundle"
	"github.com/otactl/otactl/pkg/ota/wire"
	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/transport"
)

// HealthFailAction says what an Updater does with a new firmware that
// failed its health check.
type HealthFailAction string

// Health-failure actions.
const (
	// HealthFailRevert calls OTA.Revert at once and waits for the device to
	// come back on its old firmware (the default).
	HealthFailRevert HealthFailAction = "revert"
	// HealthFailWait leaves the firmware uncommitted: it falls back at its
	// commit timeout, or at any reboot before that.
	HealthFailWait HealthFailAction = "wait"
)

// Defaults of an Updater.
const (
	// DefaultCallTimeout bounds each exchange with the device (the
	// pre-check, the commit) when Updater.Timeout is zero.
	DefaultCallTimeout = 20 * time.Second
	// DefaultRebootTimeout bounds the wait for a device to come back
	// after its reboot when Updater.RebootTimeout is zero: boards take a
	// while to rejoin a network.
	DefaultRebootTimeout = 2 * time.Minute
	// RevertRebootTimeout bounds how long a device that accepted
	// OTA.Revert may keep answering from the firmware it reverts (it
	// reboots ~100 ms after replying).
	RevertRebootTimeout = 15 * time.Second
	// VerdictMargin extends the wait for an outcome past the reboot
	// timeout, so that a device that answers all along on its old firmware
	// is seen once more when that timeout passes and reported as
	// NotApplied (exit 6), not as unreachable (exit 5).
	VerdictMargin = 5 * time.Second
)

// Updater runs one whole update of one device: it checks the device and
// the bundle (refusing, before anything is sent, what the device would
// refuse), hands the bundle over (the device downloads a URL or a file
// otactl serves, or otactl pushes the file over the RPC link), waits for
// the device to reboot and tells what it booted, checks the new firmware's
// health and commits it — and returns a Report of all of it.
//
// An Updater is a value describing the update; Run does not change it, so
// one Updater may be run for several devices (set Address and Dial per
// device on copies), and any number of runs may go on at once in one
// process: each run has its own state, and the only things shared are the
// ones given (a BundleServer, a LocalBundle), which are safe for concurrent
// use.
type Updater struct {
	// Dial connects to the device (required). A run dials for the
	// pre-check, for the transfer and for every wait after a reboot, and
	// closes what it dialed; over a link that allows one user at a time
	// (serial) it never holds two connections at once.
	Dial Dialer
	// Address names the device: its --port (credentials are redacted in
	// the Report). It also tells which local address a device reaches to
	// download a served file.
	Address string

	// URL is a bundle the device downloads (SourceURL). Exactly one of URL,
	// File and Bundle is set.
	URL string
	// File is a local bundle; Bundle one already opened and checked (shared
	// by many runs). Either is served over HTTP to the device
	// (SourceServed), or pushed over the RPC link when Push is set
	// (SourcePushed).
	File   string
	Bundle *LocalBundle
	Push   bool
	// Server serves a local bundle to the device; nil: the run starts its
	// own BundleServer on ServeAddr (HOST[:PORT]; empty: this machine's
	// address on the route to Address, any free port) and stops it when the
	// update is decided.
	Server    *BundleServer
	ServeAddr string
	// Serve, if set, gives the device a download of the local bundle from
	// a server the caller runs (a rollout's, shared by many devices)
	// instead of Server: it returns the URL the device fetches and a
	// function that ends the download; progress gets the bytes the device
	// fetched.
	Serve func(progress func(sent, total int64)) (url string, stop func())

	// CommitTimeout is how long the new firmware waits for OTA.Commit
	// before rolling back (zero: DefaultCommitTimeout; AutoCommit: commit
	// at boot). UpdateTimeout is the device's update watchdog (zero:
	// DefaultUpdateTimeout).
	CommitTimeout time.Duration
	UpdateTimeout time.Duration
	// Commit commits the new firmware once it answers (after Health).
	Commit bool
	// NoWait returns once the device accepted the update, without waiting
	// for the reboot (Result AcceptedOnly).
	NoWait bool
	// Health is the health check run before committing (Health.Method
	// empty: none); OnHealthFail what to do when it fails (default
	// HealthFailRevert).
	Health       HealthOptions
	OnHealthFail HealthFailAction
	// Force sends a bundle whose platform is not exactly the device's
	// (which the device itself takes when its platform merely starts with
	// the device's).
	Force bool
	// Signatures, if set, is the device's signature policy (its
	// update.keyN and update.sig_req_mask): a local bundle it would refuse
	// is refused before anything is sent.
	Signatures *bundle.SignaturePolicy

	// Timeout bounds each exchange with the device (the pre-check, the
	// commit; default DefaultCallTimeout); a URL update's reply may take
	// UpdateTimeout more. RebootTimeout bounds the wait for the device to
	// come back after its reboot (default DefaultRebootTimeout).
	Timeout       time.Duration
	RebootTimeout time.Duration
	// Push tuning (see PushOptions): WriteTimeout bounds each OTA.Write
	// (zero: DefaultWriteTimeout), ChunkSize the bytes per write (zero:
	// the largest that fits), Window the writes in flight (zero: 1).
	WriteTimeout time.Duration
	ChunkSize    int
	Window       int

	// OnEvent, if set, gets every step of the run, each with its Phase:
	// progress (EventDownload, EventServed, EventSent), sentences
	// (EventNote, EventWarning) and the events of the underlying calls.
	// Events come one at a time (never concurrently) and the run waits for
	// the callback: keep it quick.
	OnEvent func(Event)
}

// run is the state of one Run.
type run struct {
	u     Updater // a copy, with defaults
	rep   *Report
	evMu  sync.Mutex
	phase Phase
	ph0   time.Time

	source Source
	local  *LocalBundle // the bundle file, for SourceServed and SourcePushed
	expect Firmware     // what the new firmware is, when known
	before Observation
	device Identity // the device updated: every later answer is checked against it

	stopDL   func()        // ends the served download
	ownSrv   *BundleServer // the server the run started, if any
	stopOnce sync.Once
}

// Run performs the update and returns its Report; it never returns nil.
// ctx bounds the whole run: when it is cancelled, the run stops where it is
// (a push is aborted with OTA.End) and the Report says in what state the
// device was left (ReasonInterrupted).
func (u Updater) Run(ctx context.Context) *Report {
	r := &run{u: u, rep: &Report{Device: transport.RedactString(u.Address), Started: time.Now()}}
	r.defaults()
	err := r.run(ctx)
	var ie *InterruptedError
	if err != nil && ctx.Err() != nil && errors.Is(err, context.Canceled) && !errors.As(err, &ie) {
		err = &InterruptedError{Err: err}
	}
	r.endPhase()
	r.stopServing()
	if r.ownSrv != nil {
		_ = r.ownSrv.Close()
	}
	if r.local != nil && r.u.Bundle == nil {
		_ = r.local.Close()
	}
	r.finishReport(err)
	return r.rep
}

func (r *run) defaults() {
	u := &r.u
	if u.Timeout <= 0 {
		u.Timeout = DefaultCallTimeout
	}
	if u.RebootTimeout <= 0 {
		u.RebootTimeout = DefaultRebootTimeout
	}
	if u.UpdateTimeout <= 0 {
		u.UpdateTimeout = DefaultUpdateTimeout
	}
	if u.OnHealthFail == "" {
		u.OnHealthFail = HealthFailRevert
	}
	if u.Health.CallTimeout <= 0 {
		u.Health.CallTimeout = min(u.Timeout, 5*time.Second)
	}
	if u.Health.Grace <= 0 {
		u.Health.Grace = DefaultHealthGrace
	}
}

// emit passes e on with the current phase, one event at a time.
func (r *run) emit(e Event) {
	if r.u.OnEvent == nil {
		return
	}
	if e.Phase == "" {
		e.Phase = r.phase
	}
	r.evMu.Lock()
	defer r.evMu.Unlock()
	r.u.OnEvent(e)
}

func (r *run) note(format string, args ...any) {
	r.emit(Event{Kind: EventNote, Msg: fmt.Sprintf(format, args...)})
}

// startPhase ends the current phase and starts p.
func (r *run) startPhase(p Phase) {
	r.endPhase()
	r.phase, r.ph0 = p, time.Now()
	r.emit(Event{Kind: EventPhase, Phase: p, Msg: string(p)})
}

func (r *run) endPhase() {
	if r.phase != "" && !r.ph0.IsZero() {
		r.rep.Phases = append(r.rep.Phases, PhaseTime{Phase: r.phase, Start: r.ph0, Duration: time.Since(r.ph0)})
		r.ph0 = time.Time{}
	}
}

// stopServing ends the served download, once the update is decided.
func (r *run) stopServing() {
	r.stopOnce.Do(func() {
		if r.stopDL != nil {
			r.stopDL()
		}
		if r.ownSrv != nil {
			_ = r.ownSrv.Close()
		}
	})
}

// finishReport completes the report for err (nil: success).
func (r *run) finishReport(err error) {
	rep := r.rep
	rep.Elapsed = time.Since(rep.Started)
	rep.Err = err
	if err == nil {
		if rep.Reason == "" {
			rep.Reason = ReasonOK
		}
		return
	}
	if rep.Reason == "" || rep.Reason == ReasonOK {
		rep.Reason = Classify(err)
	}
	if rep.Result == "" {
		rep.Result = ResultOf(err, rep.Reason, rep.Sent)
	}
	if rep.Message == "" {
		rep.Message = err.Error()
	}
}

func (r *run) run(ctx context.Context) error {
	u := &r.u
	r.startPhase(PhaseCheck)
	if u.Dial == nil {
		return errors.New("update: no dialer")
	}
	if err := CheckTimeouts(u.CommitTimeout, u.UpdateTimeout); err != nil {
		return err
	}
	var man *bundle.Manifest
	switch {
	case u.URL != "" && (u.File != "" || u.Bundle != nil):
		return WithReason(ReasonUsage, errors.New("update needs exactly one of a bundle URL and a local bundle"))
	case u.URL != "":
		r.source = SourceURL
		if pu, err := url.Parse(u.URL); err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			return WithReason(ReasonUsage, errors.New("--url must be an http:// or https:// URL the device can reach"))
		}
		if u.Push {
			return WithReason(ReasonUsage, errors.New("a push sends a local bundle, not a URL"))
		}
		if u.Signatures != nil {
			return WithReason(ReasonUsage, errors.New("--pubkey checks a local bundle (update --file, push); check a bundle you publish at a URL with 'otactl bundle verify --pubkey' before publishing it"))
		}
	default:
		r.source = SourceServed
		if u.Push {
			r.source = SourcePushed
		}
		r.local = u.Bundle
		if r.local == nil {
			if u.File == "" {
				return WithReason(ReasonUsage, errors.New("update needs a bundle URL or a local bundle"))
			}
			b, err := OpenBundle(u.File)
			if err != nil {
				return err
			}
			r.local = b
		}
		if err := r.local.CheckSignatures(u.Signatures); err != nil {
			return err
		}
		man = r.local.Manifest()
		r.expect = r.local.Firmware()
	}
	r.rep.Source = r.source
	if man != nil {
		a := r.expect
		r.rep.Attempted = &a
	}
	if err := r.prepare(ctx, man); err != nil {
		return err
	}
	r.startPhase(PhaseTransfer)
	var accepted Accepted
	var err error
	if r.source == SourcePushed {
		accepted, err = r.push(ctx)
	} else {
		accepted, err = r.update(ctx)
	}
	if err != nil {
		return err
	}
	return r.finish(ctx, accepted)
}

// withDevice dials with Timeout bounding the whole exchange, and runs fn.
// Where more than one device can answer to one address (MQTT), it then
// waits the client's settle time for a second device's late replies
// before the caller goes on to change the device (docs/transports.md,
// "More than one device"): two devices with one id stop the update.
func (r *run) withDevice(ctx context.Context, fn func(ctx context.Context, c *rpc.Client, d *Device) error) error {
	timeout := r.u.Timeout
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := r.dial(tctx)
	if err != nil {
		return noAnswer(err, timeout)
	}
	defer c.Close()
	err = fn(tctx, c, New(c))
	if c.Shared() {
		if dup := c.Err(); dup != nil {
			return dup
		}
	}
	if err != nil {
		return noAnswer(err, timeout)
	}
	if c.Shared() {
		return c.Settle(ctx, c.SettleTime())
	}
	return nil
}

// dial connects with Updater.Dial; a failure that says nothing more
// precise (refused credentials, TLS, a bad address) means the device is
// unreachable (exit 5).
func (r *run) dial(ctx context.Context) (*rpc.Client, error) {
	c, err := r.u.Dial(ctx)
	if err != nil {
		if errors.Is(err, transport.ErrBadPort) || errors.Is(err, transport.ErrAuth) || errors.Is(err, context.Canceled) {
			return nil, err
		}
		var re *ReasonError
		if errors.As(err, &re) {
			return nil, err
		}
		return nil, exitAs(ExitUnreachable, err)
	}
	return c, nil
}

// noAnswer turns a deadline into an unreachable device, saying what to do.
func noAnswer(err error, timeout time.Duration) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return exitAs(ExitUnreachable, fmt.Errorf("%w: no answer within %v: check --port and that the device is on, or raise --timeout", err, timeout))
	}
	return err
}

// prepare reads the device's state before the update and refuses what the
// device would refuse, and what otactl refuses on top (a bundle for another
// platform), with the reason in words. Once it returns without error, the
// update may be sent.
func (r *run) prepare(ctx context.Context, man *bundle.Manifest) error {
	var before Observation
	err := r.withDevice(ctx, func(ctx context.Context, c *rpc.Client, d *Device) error {
		var err error
		before, err = d.Observe(ctx)
		return err
	})
	if err != nil {
		return err
	}
	r.before = before
	r.rep.Before = &before
	r.device = IdentityOf(before.Info)
	if !before.Boot.IsCommitted {
		return exitAs(ExitUpdate, fmt.Errorf("%w: %w: the device runs uncommitted firmware on slot %d: run 'otactl commit' to keep it or 'otactl revert' to go back, then update", ErrUpdateFailed, ErrUncommitted, before.Boot.ActiveSlot))
	}
	if man != nil && before.Info.Arch != "" && !SamePlatform(man.Platform, before.Info.Arch) {
		if !r.u.Force {
			return WithReason(ReasonWrongPlatform, fmt.Errorf(
				"%w: the bundle is for platform %q but the device is %q; nothing was sent (a device takes any bundle whose platform starts with its own, so it would install this one: --force sends it anyway)",
				ErrUpdateFailed, man.Platform, before.Info.Arch))
		}
		r.note("warning: the bundle is for platform %q, the device is %q: sending it anyway (--force)", man.Platform, before.Info.Arch)
	}
	r.rep.Sent = true
	return nil
}

// update hands the bundle over with OTA.Update: from its URL, or from a
// local file served to the device.
func (r *run) update(ctx context.Context) (Accepted, error) {
	u := &r.u
	updateURL := u.URL
	served := r.source == SourceServed
	if served {
		// The last byte is shown once the device said it is done: it still
		// checks what it downloaded.
		progress := func(sent, total int64) {
			r.emit(Event{Kind: EventServed, Sent: min(sent, total-1), Total: total})
		}
		if u.Serve != nil {
			updateURL, r.stopDL = u.Serve(progress)
		} else {
			srv := u.Server
			if srv == nil {
				addr, err := ServeAddr(u.ServeAddr, u.Address)
				if err != nil {
					return Accepted{}, err
				}
				if srv, err = NewBundleServer(addr); err != nil {
					return Accepted{}, err
				}
				r.ownSrv = srv
			}
			dl := srv.Register(r.local, progress)
			updateURL, r.stopDL = dl.URL, dl.Close
			r.note("serving %s at %s (one download)", r.local.Path, dl.URL)
		}
	}
	var accepted Accepted
	err := func() error {
		// The device answers OTA.Update only when the download is done: give
		// it as long as its own watchdog, plus the usual timeout.
		uctx, cancel := context.WithTimeout(ctx, u.UpdateTimeout+u.Timeout)
		defer cancel()
		c, err := r.dial(uctx)
		if err != nil {
			return err
		}
		defer c.Close()
		info, err := r.device.checkInfo(uctx, New(c))
		if err != nil {
			var dc *DeviceChangedError
			if errors.As(err, &dc) {
				dc.While, dc.NothingInstalled = "before OTA.Update", true
				dc.Then = fmt.Sprintf("nothing was sent to device %s either", dc.Want)
			}
			return err
		}
		// The identity check's Sys.GetInfo is the update's baseline: it
		// was read on this link a moment ago, nothing sent in between.
		accepted, err = New(c).update(uctx, UpdateArgs{
			URL: updateURL, CommitTimeout: u.CommitTimeout, Timeout: u.UpdateTimeout,
			OnEvent: func(ev Event) {
				if ev.Kind == EventDownload && served {
					return // the served bytes tell the progress
				}
				r.emit(ev)
			},
		}, info)
		return err
	}()
	if err != nil || accepted.Confirmed {
		// Decided (or the device has the whole bundle): no more serving.
		r.stopServing()
	}
	if err != nil {
		if ctx.Err() != nil {
			return accepted, &InterruptedError{Err: err, Msg: r.interruptedDownload()}
		}
		return accepted, updateRejected(err, u.UpdateTimeout+u.Timeout)
	}
	return accepted, nil
}

// interruptedDownload says what becomes of an OTA.Update that otactl
// stopped waiting for: the device cannot be told to stop it.
func (r *run) interruptedDownload() string {
	if r.source == SourceServed {
		return "otactl stopped serving the bundle, so the device's download fails and its boot state stays unchanged, unless it had already received the whole bundle: check with 'otactl status' and 'otactl bootstate'"
	}
	return "the device goes on with the update by itself (OTA.Update cannot be called off); if the bundle is good, it reboots into it uncommitted, and falls back unless you run 'otactl commit': check with 'otactl status' and 'otactl bootstate'"
}

// updateRejected gives a refused or failed transfer its exit code (6)
// while keeping the device's words.
func updateRejected(err error, timeout time.Duration) error {
	if errors.Is(err, rpc.ErrAuth) { // the device refused the caller (exit 4), not the bundle
		return fmt.Errorf("%w; its boot state is unchanged", err)
	}
	var ge *GaveUpError
	if errors.As(err, &ge) { // says what the device does and what ends it
		return exitAs(ExitUnreachable, err)
	}
	if errors.Is(err, ErrBusy) { // already says what to do, and that the boot state stays
		return exitAs(ExitUpdate, err)
	}
	if errors.Is(err, ErrUpdateFailed) { // already says the update did not take
		if strings.Contains(err.Error(), "boot state is unchanged") {
			return exitAs(ExitUpdate, err)
		}
		return exitAs(ExitUpdate, fmt.Errorf("%w; its boot state is unchanged", err))
	}
	var re *rpc.Error
	if errors.As(err, &re) {
		return exitAs(ExitUpdate, fmt.Errorf("%w: the device did not take the update: %w; its boot state is unchanged", ErrUpdateFailed, err))
	}
	return noAnswer(err, timeout)
}

// push sends the local bundle through the RPC link.
func (r *run) push(ctx context.Context) (Accepted, error) {
	u := &r.u
	reconnect := min(u.RebootTimeout, u.UpdateTimeout)
	var res PushResult
	err := func() error {
		// The dial (serial handshake, MQTT connect) is bounded by Timeout;
		// the transfer by the per-step timeouts inside Push, and regaining
		// a lost link by the reboot timeout (never longer than the device's
		// watchdog, after which the update is dead).
		dctx, dcancel := context.WithTimeout(ctx, u.Timeout)
		c, err := r.dial(dctx)
		dcancel()
		if err != nil {
			return err
		}
		defer c.Close()
		// A call made to regain a lost link gets at most
		// DefaultAttemptTimeout: a request sent while the device is still
		// away from its broker is lost, and the next attempt should not
		// wait long for its reply.
		res, err = New(c).Push(ctx, r.local, r.local.Size, PushOptions{
			ChunkSize: u.ChunkSize, Window: u.Window, WriteTimeout: u.WriteTimeout,
			CommitTimeout: u.CommitTimeout, Timeout: u.UpdateTimeout, Device: r.device,
			Redial: r.dial, ReconnectTimeout: reconnect, AttemptTimeout: min(u.Timeout, DefaultAttemptTimeout),
			Progress: func(sent, total int64) { r.emit(Event{Kind: EventSent, Sent: sent, Total: total}) },
			OnEvent: func(ev Event) {
				if ev.Kind == EventReconnecting {
					ev.Msg += fmt.Sprintf(" (giving up after %s)", human.Duration(reconnect))
				}
				r.emit(ev)
			},
		})
		return err
	}()
	if err != nil {
		if ctx.Err() != nil {
			return res.Accepted, &InterruptedError{Err: err, Msg: interruptedPush(err, res)}
		}
		return res.Accepted, pushFailed(err, u.Timeout, u.UpdateTimeout)
	}
	tr := &TransferStats{Bytes: res.Size, ChunkSize: res.ChunkSize, Chunks: res.Chunks, Retries: res.Retries,
		Resumes: res.Resumes, Elapsed: res.Elapsed}
	r.rep.Transfer = tr
	r.emit(Event{Kind: EventTransferred, Transfer: tr, Sent: res.Size, Total: res.Size,
		Msg: fmt.Sprintf("sent %s in %d chunks of %d bytes in %s (%s/s)", human.Bytes(res.Size), res.Chunks, res.ChunkSize,
			human.PreciseDuration(res.Elapsed), human.Bytes(int64(tr.BytesPerSecond())))})
	return res.Accepted, nil
}

// pushFailed gives the exit code and words of a failed push. A device that
// lost the update (reset, or the update ended while the link was down)
// did not apply it: exit 6, on every transport alike, with the
// *UpdateLostError's reason (device_reset; update_timeout or another code
// of the device's message when its update ended; busy when it runs another
// update). A link that did not come back is exit 5, saying what the device
// does meanwhile.
func pushFailed(err error, timeout, updateTimeout time.Duration) error {
	var dc *DeviceChangedError
	if errors.As(err, &dc) {
		return exitAs(ExitUnreachable, err)
	}
	var lost *UpdateLostError
	if errors.As(err, &lost) {
		return exitAs(ExitUpdate, err)
	}
	if errors.Is(err, ErrLinkLost) {
		return exitAs(ExitUnreachable, fmt.Errorf("%w; until then 'otactl status' shows the update in progress (its watchdog: --update-timeout %s); push again once the device is reachable", err, human.Duration(updateTimeout)))
	}
	return updateRejected(err, timeout)
}

// interruptedPush says in what state an interrupted push left the device.
func interruptedPush(err error, res PushResult) string {
	var pe *PushError
	switch {
	case errors.As(err, &pe) && pe.Aborted:
		return fmt.Sprintf("the transfer stopped at offset %d and was aborted (OTA.End); the boot state is unchanged, and a new push starts over", pe.Offset)
	case errors.As(err, &pe) && pe.Unreached:
		return fmt.Sprintf("the transfer stopped at offset %d while the link to the device was down, so it could not be aborted: the device's update watchdog ends the update (see 'otactl status'); the boot state is unchanged", pe.Offset)
	case errors.As(err, &pe):
		return fmt.Sprintf("the transfer stopped at offset %d; the device did not confirm the abort, so its update watchdog ends the update (see 'otactl status'); the boot state is unchanged", pe.Offset)
	case res.Chunks == 0:
		return "no data had been sent yet; the update was called off and the boot state is unchanged (see 'otactl status')"
	}
	return "all data was sent and the device was checking it (OTA.End): if the bundle is good, it reboots into it uncommitted, and falls back unless you run 'otactl commit': check with 'otactl bootstate'"
}

// finish waits for the device to come back after an accepted update, says
// what booted, and commits when asked.
func (r *run) finish(ctx context.Context, accepted Accepted) error {
	u := &r.u
	rep := r.rep
	if u.NoWait {
		r.stopServing()
		rep.Result, rep.Reason = AcceptedOnly, ReasonOK
		rep.Message = "the device accepted the update and is rebooting into it (not waiting)"
		return nil
	}
	r.startPhase(PhaseReboot)
	r.note("bundle accepted; waiting for the device to reboot and answer…")
	wctx, cancel := context.WithTimeout(ctx, u.RebootTimeout+VerdictMargin)
	defer cancel()
	out, c, err := WaitOutcome(wctx, WaitOptions{
		Dial: r.dial, Before: r.before, Accepted: accepted.Confirmed || accepted.Finished, Expect: r.expect, Device: r.device,
		RebootTimeout: u.RebootTimeout, OnEvent: r.emit,
	})
	r.stopServing()
	if c != nil {
		defer c.Close()
	}
	if out == nil {
		if ctx.Err() != nil {
			msg := fmt.Sprintf("the device had accepted the update and was rebooting into it; nothing was committed: check what booted with 'otactl bootstate', and run 'otactl commit' to keep the new firmware (uncommitted, it falls back to slot %d)", r.before.Boot.ActiveSlot)
			if u.CommitTimeout == AutoCommit {
				msg = "the device had accepted the update and was rebooting into it; with --commit-timeout 0 the new firmware commits itself at boot: check what booted with 'otactl bootstate'"
			}
			return &InterruptedError{Err: err, Msg: msg}
		}
		var dc *DeviceChangedError
		if errors.As(err, &dc) {
			dc.Then = r.rebootingThen(dc.Want, accepted.Confirmed || accepted.Finished)
			return exitAs(ExitUnreachable, dc)
		}
		if !accepted.Confirmed {
			// The link went before the device answered: otactl does not
			// know that it took the update, nor that it rebooted.
			method := wire.OTAUpdate
			if r.source == SourcePushed {
				method = wire.OTAEnd
			}
			return noAnswer(fmt.Errorf("lost the link before the device answered %s, and could not reach it again within %s: the update may still be running, or the device may have installed it and rebooted into it (on trial, not committed); check with 'otactl status' and 'otactl bootstate': %w",
				method, human.Duration(u.RebootTimeout), err), u.RebootTimeout)
		}
		return noAnswer(fmt.Errorf("the device did not come back after the update: %w", err), u.RebootTimeout)
	}
	r.setOutcome(out)
	if rep.Attempted == nil && out.Result.Took() {
		fw := out.Info.Firmware()
		rep.Attempted = &fw
	}
	if !out.Result.Took() {
		return r.failed(out.Err())
	}
	if out.Result == UpdatedUncommitted && u.Commit {
		// WaitOutcome's probe read the boot state and the device's
		// identity on c a moment ago (out.After, out.Info), nothing sent
		// since: not read again before the health check or OTA.Commit.
		seen := out.After
		if err := r.commit(ctx, c, out, &seen); err != nil {
			return err
		}
	}
	if !rep.Committed && !out.CommitDeadline.IsZero() {
		rep.CommitDeadline = out.CommitDeadline
	}
	return nil
}

// setOutcome fills the report from WaitOutcome's verdict.
func (r *run) setOutcome(out *Outcome) {
	rep := r.rep
	rep.Result, rep.Reason, rep.Message = out.Result, out.Reason, out.Message
	after, info := out.After, out.Info
	rep.After, rep.RunningInfo, rep.Running = &after, &info, info.Firmware()
	rep.Committed = out.After.IsCommitted
}

// failed ends the run with a verdict read from the device (the report says
// it) and err, which wraps ErrUpdateFailed.
func (r *run) failed(err error) error {
	r.rep.Observed = true
	return exitAs(ExitUpdate, err)
}

// commit runs the health check (with its grace period) and commits the new
// firmware. seen, when set, is the boot state just read on c, after the
// device's identity was checked on it, nothing sent since: it is not read
// again before the health check (commitAfterHealthCheck).
func (r *run) commit(ctx context.Context, c *rpc.Client, out *Outcome, seen *BootState) error {
	u := &r.u
	rep := r.rep
	h := u.Health
	if h.Method != "" {
		r.startPhase(PhaseHealth)
		r.note("new firmware answers; checking its health with %s (for up to %s)…", h.Method, human.Duration(h.Grace))
	} else {
		r.startPhase(PhaseCommit)
	}
	if !out.CommitDeadline.IsZero() {
		// Never check past the moment the device falls back by itself.
		if room := time.Until(out.CommitDeadline) - 2*time.Second; room < h.Grace {
			h.Grace = max(room, time.Second)
		}
	}
	h.Device = r.device
	h.OnEvent = func(ev Event) {
		if ev.Kind == EventHealthCheck {
			rep.HealthChecks = ev.Attempt
		}
		if ev.Kind == EventCommitted && r.phase != PhaseCommit {
			r.startPhase(PhaseCommit) // after the health check
		}
		r.emit(ev)
	}
	// The health check has its own grace period (its last try may end one
	// call timeout later); the rest of the commit the usual Timeout.
	cctx, ccancel := context.WithTimeout(ctx, h.Grace+h.CallTimeout+u.Timeout)
	bs, err := New(c).commitAfterHealthCheck(cctx, h, seen)
	ccancel()
	var dc *DeviceChangedError
	if errors.Is(err, ErrAlreadyCommitted) && bs.ActiveSlot == out.After.ActiveSlot && bs.IsCommitted {
		err = nil // it committed itself meanwhile: the same slot, committed
	}
	switch {
	case err == nil:
		rep.Result, rep.Reason, rep.Committed, rep.After = UpdatedCommitted, ReasonOK, true, &bs
		rep.Message = fmt.Sprintf("slot %d runs %s, committed", bs.ActiveSlot, out.Info.Firmware())
		if h.Method != "" {
			rep.Message += " after " + h.Method + " answered"
		}
		return nil
	case errors.Is(err, ErrAlreadyCommitted):
		// Between the outcome and the commit, the device fell back: the
		// commit timeout expired first (or someone reverted). (bs is still
		// the uncommitted state when the device could not be read again
		// after refusing OTA.Commit.)
		rep.Result, rep.Reason, rep.Committed = RolledBack, ReasonRolledBack, true
		if bs.IsCommitted {
			rep.After = &bs
		}
		rep.Running, rep.RunningInfo = r.before.Info.Firmware(), nil
		rep.Message = fmt.Sprintf("slot %d ran %s uncommitted, but its commit timeout expired before otactl could commit it: the device falls back to slot %d", out.After.ActiveSlot, out.Info.Firmware(), out.After.RevertSlot)
		return r.failed(fmt.Errorf("%w: %s", ErrUpdateFailed, rep.Message))
	case errors.As(err, &dc):
		rep.Result = Unknown
		dc.While = "before OTA.Commit"
		dc.Then = fmt.Sprintf("device %s was last seen running %s on slot %d, uncommitted, and was not committed: it falls back to slot %d at its commit timeout or any reboot unless committed; find it and check it with 'otactl bootstate'",
			dc.Want, out.Info.Firmware(), out.After.ActiveSlot, out.After.RevertSlot)
		rep.Message = dc.Error()
		return exitAs(ExitUnreachable, dc)
	case errors.Is(err, ErrHealthCheck):
		return r.healthFailed(ctx, c, out, err)
	case ctx.Err() != nil:
		return &InterruptedError{Err: err, Msg: "the new firmware runs, but otactl may not have committed it: check with 'otactl bootstate', and run 'otactl commit' if it is not committed"}
	}
	return noAnswer(err, u.Timeout)
}

// healthFailed reverts a new firmware whose health check failed (or, with
// HealthFailWait, leaves it to fall back by itself) and reports it.
func (r *run) healthFailed(ctx context.Context, c *rpc.Client, out *Outcome, herr error) error {
	u := &r.u
	rep := r.rep
	var he *HealthError
	why := herr.Error()
	if errors.As(herr, &he) {
		why = he.Error()
		rep.HealthChecks = he.Tries
	}
	rep.Reason = ReasonHealthFailed
	if u.OnHealthFail == HealthFailWait {
		rep.Result = HealthCheckFailed
		rep.Message = fmt.Sprintf("%s; not committed: slot %d falls back to slot %d", why, out.After.ActiveSlot, out.After.RevertSlot)
		if !out.CommitDeadline.IsZero() {
			d := out.CommitDeadline
			rep.CommitDeadline = d
			rep.Message += fmt.Sprintf(" when its commit timeout expires, at about %s (in %s),", d.Format(time.TimeOnly), human.Duration(time.Until(d)))
		}
		rep.Message += " or at any reboot before that (--on-health-fail wait)"
		return r.failed(WithReason(ReasonHealthFailed, fmt.Errorf("%w: %s", ErrUpdateFailed, rep.Message)))
	}
	r.startPhase(PhaseRevert)
	r.note("%s; reverting to slot %d…", why, out.After.RevertSlot)
	rt := min(RevertRebootTimeout, u.RebootTimeout)
	wctx, cancel := context.WithTimeout(ctx, rt+VerdictMargin)
	defer cancel()
	rout, rc, err := RevertAndWait(wctx, c, WaitOptions{Dial: r.dial, RebootTimeout: rt, Device: r.device, OnEvent: r.emit})
	if rc != nil {
		rc.Close()
	}
	var dc *DeviceChangedError
	if errors.As(err, &dc) {
		rep.Result = Unknown
		if dc.While == "" {
			dc.While = "before OTA.Revert"
			dc.Then = fmt.Sprintf("%s; device %s was not reverted: it falls back to slot %d at its commit timeout or any reboot unless committed; find it and check it with 'otactl bootstate'", why, dc.Want, out.After.RevertSlot)
		} else {
			dc.Then = fmt.Sprintf("%s; device %s was sent OTA.Revert and should run slot %d again; find it and check it with 'otactl bootstate'", why, dc.Want, out.After.RevertSlot)
		}
		rep.Message = dc.Error()
		return exitAs(ExitUnreachable, dc)
	}
	if rout != nil && rout.Result == RolledBack {
		after, info := rout.After, rout.Info
		rep.Result, rep.Committed = RolledBack, true
		rep.After, rep.RunningInfo, rep.Running = &after, &info, info.Firmware()
		rep.CommitDeadline = time.Time{}
		rep.Message = fmt.Sprintf("%s; otactl reverted it: slot %d runs %s again, committed", why, rout.After.ActiveSlot, rout.Info.Firmware())
		return r.failed(WithReason(ReasonHealthFailed, fmt.Errorf("%w: %s", ErrUpdateFailed, rep.Message)))
	}
	// The revert did not go through: the firmware stays uncommitted and
	// falls back by itself.
	rep.Result = HealthCheckFailed
	if errors.Is(err, ErrAlreadyCommitted) {
		rep.Message = fmt.Sprintf("%s; OTA.Revert was refused: the firmware is committed now (it fell back, or committed itself): check with 'otactl bootstate'", why)
	} else {
		rep.Message = fmt.Sprintf("%s; reverting failed (%v): the firmware is not committed, so the device falls back to slot %d when its commit timeout expires or at any reboot", why, err, out.After.RevertSlot)
	}
	if ctx.Err() != nil {
		return &InterruptedError{Err: err, Msg: rep.Message}
	}
	return r.failed(WithReason(ReasonHealthFailed, fmt.Errorf("%w: %s", ErrUpdateFailed, rep.Message)))
}

// CommitTrial finishes a device that already runs the update's firmware on
// trial (uncommitted: installed by an earlier run that was interrupted
// after the device rebooted, or by hand): the health check and the commit
// of a run with Commit, reverting on a failed health check as Run does
// (OnHealthFail). Nothing is sent. info and bs are what the device
// reported, at (the moment of its Sys.GetInfo reply). The report has no
// Source; Before is the firmware on trial.
func (u Updater) CommitTrial(ctx context.Context, info SysInfo, bs BootState, at time.Time) *Report {
	r := &run{u: u, rep: &Report{Device: transport.RedactString(u.Address), Started: time.Now()}}
	r.defaults()
	fw := info.Firmware()
	r.rep.Attempted = &fw
	r.rep.Before = &Observation{Info: info, Boot: bs, At: at}
	// The firmware it falls back to is not known here: a device that fell
	// back before the commit is read again below.
	r.before = Observation{Boot: bs, At: at}
	r.device = IdentityOf(info)
	out := &Outcome{Result: UpdatedUncommitted, Reason: ReasonOK, Before: bs, After: bs, BeforeInfo: info, Info: info,
		Message: fmt.Sprintf("slot %d already runs %s, uncommitted", bs.ActiveSlot, fw)}
	if v := ViewBoot(bs, &info); v.FallbackIn != nil {
		out.CommitDeadline = at.Add(*v.FallbackIn)
	}
	r.setOutcome(out)
	err := r.withDevice(ctx, func(ctx context.Context, c *rpc.Client, d *Device) error {
		err := r.commit(ctx, c, out, nil) // out was read on another link
		if r.rep.Result == RolledBack && r.rep.Running.IsZero() {
			if now, ierr := d.GetInfo(ctx); ierr == nil {
				r.rep.Running = now.Firmware()
			}
		}
		return err
	})
	if err == nil && r.rep.Committed {
		r.rep.Message = "it already ran the build on trial (nothing sent): " + r.rep.Message
	}
	r.endPhase()
	r.finishReport(err)
	return r.rep
}

// rebootingThen says what is known of device want, which was rebooting
// into the update when another device answered at its port.
func (r *run) rebootingThen(want Identity, confirmed bool) string {
	s := fmt.Sprintf("device %s had accepted the update and was rebooting into it", want)
	if !confirmed {
		s = fmt.Sprintf("device %s may have taken the update (its reply was lost)", want)
	}
	if r.u.CommitTimeout == AutoCommit {
		return s + "; with --commit-timeout 0 the new firmware commits itself at boot: find the device and check what it runs with 'otactl bootstate'"
	}
	return s + fmt.Sprintf("; nothing was committed: it runs the new firmware on trial (falling back to slot %d unless committed) or its old one: find it and check with 'otactl bootstate'", r.before.Boot.ActiveSlot)
}
