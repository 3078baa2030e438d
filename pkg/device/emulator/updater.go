package emulator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/otactl/otactl/pkg/ota/bundle"
	"github.com/otactl/otactl/pkg/ota/wire"
	"github.com/otactl/otactl/pkg/rpc"
)

// update is one running update.
type update struct {
	d       *Device
	target  int // the slot written
	ctx     context.Context
	cancel  context.CancelCauseFunc
	timeout time.Duration
	ct      int
	total   atomic.Int64 // bundle size when known
	got     atomic.Int64 // bytes received

	wmu sync.Mutex
	wdt Timer

	done        chan struct{}
	reply       *callReply // the call that replies the outcome (OTA.Update, OTA.End); guarded by d.mu
	err         error      // set before done is closed
	notModified bool

	// push (OTA.Begin/Write/End): see push.go
	push    bool
	pmu     sync.Mutex     // guards the fields below
	pw      *io.PipeWriter // feeds the updater
	next    int64          // the offset the next OTA.Write must carry
	busy    bool           // a write is being handed to the updater
	moved   chan struct{}  // closed and replaced when next or busy change
	waiting int            // writes that arrived ahead of a gap, waiting
}

func (u *update) percent() int {
	t := u.total.Load()
	if t <= 0 {
		return 0
	}
	p := u.got.Load() * 100 / t
	if p > 100 {
		p = 100
	}
	return int(p)
}

// arm starts the update watchdog, once, when the update begins: the whole
// update (download or push, from OTA.Update or OTA.Begin to its end) must
// finish within u.timeout on the device's clock. Progress does not extend
// it, so a source that drips bytes cannot keep the device busy for longer
// (docs/emulator.md, "The update watchdog"). This is the only place the
// watchdog is armed.
func (u *update) arm() {
	u.wmu.Lock()
	defer u.wmu.Unlock()
	if u.wdt != nil || u.ctx.Err() != nil {
		return
	}
	u.wdt = u.d.clock.AfterFunc(u.timeout, func() {
		u.d.log.Error(wire.MsgTimedOut, "timeout_s", int64(u.timeout/time.Second),
			"received", u.got.Load(), "size", u.total.Load())
		u.cancel(errTimedOut)
	})
}

func (u *update) stopWatchdog() {
	u.wmu.Lock()
	defer u.wmu.Unlock()
	if u.wdt != nil {
		u.wdt.Stop()
		u.wdt = nil
	}
}

// statusError is an update failure with the device's status message.
type statusError struct {
	msg string
	err error
}

func (e *statusError) Error() string {
	if e.err == nil {
		return e.msg
	}
	return e.msg + ": " + e.err.Error()
}
func (e *statusError) Unwrap() error { return e.err }

var (
	errTimedOut = &statusError{msg: wire.MsgTimedOut}
	errRebooted = &statusError{msg: wire.MsgInterrupted}
)

// sourceError marks a failure to read the bundle (network, connection
// closed early), which the device reports as "Update failed".
type sourceError struct{ err error }

func (e *sourceError) Error() string { return "reading the bundle: " + e.err.Error() }
func (e *sourceError) Unwrap() error { return e.err }

// statusMessage is what the device replies for an update failure.
func statusMessage(err error) string {
	var se *statusError
	if errors.As(err, &se) {
		return se.msg
	}
	var be *bundle.Error
	if errors.As(err, &be) {
		return be.Msg
	}
	var src *sourceError
	if errors.As(err, &src) {
		return wire.MsgDownloadFailed
	}
	if errors.Is(err, ErrPowerCut) {
		return wire.MsgPowerCut
	}
	return err.Error()
}

// beginUpdate starts an update, refusing as the device does.
func (d *Device) beginUpdate(timeout, commitTimeout int64, total int64, push bool) (*update, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.upd != nil {
		d.log.Error(wire.MsgAlreadyRunning)
		return nil, rpc.Errorf(wire.CodeFailed, wire.MsgInitFailed)
	}
	if !d.mem.IsCommitted {
		d.log.Error(wire.MsgNotCommitted)
		return nil, rpc.Errorf(wire.CodeFailed, wire.MsgInitFailed)
	}
	target := d.spareSlot()
	if target < 0 {
		d.log.Error(wire.NextBootBusy(d.mem.ActiveSlot, "an update"))
		return nil, rpc.Errorf(wire.CodeFailed, wire.MsgInitFailed)
	}
	to := DefaultUpdateTimeout
	if timeout > 0 {
		to = time.Duration(timeout) * time.Second
	}
	ctx, cancel := context.WithCancelCause(d.epoch)
	u := &update{d: d, target: target, ctx: ctx, cancel: cancel, timeout: to, ct: int(max(commitTimeout, 0)), done: make(chan struct{}), push: push}
	if total > 0 {
		u.total.Store(total)
	}
	d.upd = u
	d.status = otaStatus{state: wire.StateProgress}
	d.log.Info(fmt.Sprintf("starting, timeout %d", int(to/time.Second)))
	u.arm()
	return u, nil
}

// finishUpdate ends u: on success it commits the new boot state and
// schedules the reboot; on failure the boot state is untouched.
func (d *Device) finishUpdate(u *update, target int, err error) {
	u.stopWatchdog()
	if err == nil && u.ctx.Err() != nil {
		err = context.Cause(u.ctx)
	}
	if err != nil && u.ctx.Err() != nil {
		if c := context.Cause(u.ctx); errors.Is(c, errTimedOut) {
			err = c
		} else if !errors.Is(err, ErrPowerCut) {
			err = errRebooted
		}
	}
	d.mu.Lock()
	ok := err == nil && !u.notModified
	if ok {
		st := BootState{ActiveSlot: target, IsCommitted: false, RevertSlot: d.running, CommitTimeout: u.ct}
		if serr := d.fl.saveBoot(st); serr != nil {
			err = &statusError{msg: wire.MsgCannotSave, err: serr}
			ok = false
		} else {
			d.mem = st
		}
	}
	switch {
	case ok:
		d.status = otaStatus{state: wire.StateSuccess, msg: wire.MsgApplied, progress: 100}
		d.log.Info("update applied", "slot", target)
	case u.notModified:
		d.status = otaStatus{}
	default:
		d.status = otaStatus{state: wire.StateError, msg: statusMessage(err), progress: u.percent()}
		d.log.Error("update failed", "err", err)
	}
	d.upd = nil
	u.err = err
	reply := u.reply
	d.mu.Unlock()
	if ok {
		// Scheduled before the reply is released, so that whoever gets
		// the reply finds the reboot (and its 418 window) pending; and
		// not before that reply is on the link.
		d.rebootAfterReply(reply, d.cfg.RebootAfter)
	}
	u.cancel(nil)
	close(u.done)
}

// countingReader feeds the parser, counting progress and stopping when
// the update ends (watchdog, reboot).
type countingReader struct {
	u *update
	r io.Reader
}

func (c *countingReader) Read(p []byte) (int, error) {
	if err := c.u.ctx.Err(); err != nil {
		return 0, context.Cause(c.u.ctx)
	}
	n, err := c.r.Read(p)
	if n > 0 && !c.u.push { // a push counts in OTA.Write, before it replies
		c.u.got.Add(int64(n))
	}
	if err == io.EOF && !c.u.push {
		// The parser stops at the central directory, so it reads to the
		// end of a download only when that ended before the archive did
		// (a Content-Length shorter than the bundle, a close-delimited
		// body cut short): the download failed, the bundle may well be
		// fine. A device reports "Update failed" when the connection
		// closes before the update finished (ota-http-client). (A push
		// ends its data with OTA.End: then the archive is truncated.)
		err = fmt.Errorf("the download ended after %d bytes, before the end of the archive: %w", c.u.got.Load(), io.ErrUnexpectedEOF)
	}
	if err != nil && err != io.EOF {
		if cerr := c.u.ctx.Err(); cerr != nil {
			return n, context.Cause(c.u.ctx)
		}
		err = &sourceError{err}
	}
	return n, err
}

// apply parses the bundle from src and writes its parts to the spare slot.
// It returns the slot written, once the central directory is reached.
func (d *Device) apply(u *update, src io.Reader) (int, error) {
	br, err := bundle.NewReader(&countingReader{u: u, r: src})
	if err != nil {
		return 0, err
	}
	m := br.Manifest()
	d.log.Info("FW", "name", m.Name, "platform", m.Platform, "version", m.Version, "build_id", m.BuildID)
	if err := d.checkSignatures(br); err != nil {
		return 0, err
	}
	if err := m.CheckPlatform(d.cfg.Platform); err != nil {
		d.log.Error(err.Error())
		return 0, err
	}
	// NewReader checked the manifest (bundle.Manifest.Validate): part
	// names are flat file names (flash.partPath stores parts by name), and
	// each src belongs to one part.
	bySrc := m.DataParts()
	target := u.target
	if err := d.fl.eraseSlot(target); err != nil {
		return 0, &statusError{msg: wire.MsgEraseFailed, err: err}
	}
	written := map[string]bool{}
	buf := make([]byte, 32<<10)
	for {
		e, err := br.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, err
		}
		name, ok := bySrc[e.BaseName()]
		if !ok || written[name] {
			d.log.Debug("skipping", "entry", e.Name)
			continue
		}
		p := m.Parts[name]
		path := d.fl.partPath(target, name, p)
		w, err := d.fl.create(path, "part")
		if err != nil {
			return 0, &statusError{msg: wire.MsgWritePartFailed, err: err}
		}
		_, err = io.CopyBuffer(w, e, buf)
		if cerr := w.Close(); err == nil && cerr != nil {
			err = &statusError{msg: wire.MsgWritePartFailed, err: cerr}
		}
		if err != nil {
			return 0, err
		}
		size, s1, s256, err := digestFile(path)
		if err != nil {
			return 0, &statusError{msg: wire.MsgReadBackFailed, err: err}
		}
		if err := bundle.CheckPart(name, p, size, s1, s256); err != nil {
			d.log.Error(err.Error())
			return 0, err
		}
		if e.Descriptor {
			// A device expects the next local header here (after checking the part).
			return 0, bundle.DescriptorError(e)
		}
		written[name] = true
	}
	for src, name := range bySrc {
		if !written[name] {
			return 0, &bundle.Error{Msg: bundle.ErrMissingPart.Msg, Detail: fmt.Sprintf("part %q: no entry %q in the archive", name, src)}
		}
	}
	if err := d.fl.syncSlot(target); err != nil {
		return 0, &statusError{msg: wire.MsgWritePartFailed, err: err}
	}
	if err := d.fl.writeAtomic(d.fl.manifestPath(target), br.RawManifest(), "manifest"); err != nil {
		return 0, &statusError{msg: wire.MsgManifestFailed, err: err}
	}
	return target, nil
}

func (d *Device) otaUpdate(ctx context.Context, req *rpc.Request) (any, error) {
	url, ok := req.String("url")
	if !ok || url == "" {
		return nil, rpc.Errorf(wire.CodeFailed, wire.MsgMalformed)
	}
	u, err := d.beginUpdate(intArg(req, "timeout", 0), intArg(req, "commit_timeout", 0), 0, false)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	u.reply = callFrom(ctx) // before the download can end
	d.mu.Unlock()
	if !d.spawn(func() { d.download(u, url) }) {
		d.finishUpdate(u, 0, errRebooted)
	}
	return waitUpdate(ctx, u)
}

func waitUpdate(ctx context.Context, u *update) (any, error) {
	select {
	case <-u.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if u.err != nil {
		return nil, rpc.Errorf(wire.CodeFailed, "%s", statusMessage(u.err))
	}
	if u.notModified {
		return nil, rpc.Errorf(0, wire.MsgNotModified)
	}
	return nil, rpc.Errorf(0, wire.MsgApplied)
}

func (d *Device) download(u *update, url string) {
	target, err := d.fetch(u, url)
	d.finishUpdate(u, target, err)
}

func (d *Device) fetch(u *update, url string) (int, error) {
	req, err := http.NewRequestWithContext(u.ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, &statusError{msg: wire.MsgInvalidURL, err: err}
	}
	d.log.Info("downloading", "url", req.URL.Redacted())
	resp, err := d.client.Do(req)
	if err != nil {
		return 0, &sourceError{err}
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotModified:
		u.notModified = true
		return 0, nil
	case resp.StatusCode != http.StatusOK:
		return 0, &statusError{msg: wire.InvalidHTTPResponse(resp.StatusCode)}
	}
	if resp.ContentLength > 0 {
		u.total.Store(resp.ContentLength)
	}
	return d.apply(u, resp.Body)
}
