package ota

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"time"

	"github.com/otactl/otactl/pkg/ota/wire"
	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/rpc/frame"
)

// Push defaults.
const (
	// DefaultWriteTimeout bounds each OTA.Write attempt (as mos).
	DefaultWriteTimeout = 20 * time.Second
	// DefaultFirstWriteTimeout bounds OTA.Begin and the first OTA.Write,
	// where devices erase flash.
	DefaultFirstWriteTimeout = 60 * time.Second
	// DefaultEndTimeout bounds OTA.End, where the device reads back and
	// verifies what it wrote.
	DefaultEndTimeout = 60 * time.Second
	// DefaultTries is the number of attempts per chunk (as mos).
	DefaultTries = 3
	// DefaultAttemptTimeout bounds each dial and call made to regain a
	// lost link during a push. Short: a request sent while the device is
	// still away (not yet back on its MQTT broker) is lost, and waiting
	// for its reply would only delay the next try; an OTA.Status reply
	// takes milliseconds even over serial.
	DefaultAttemptTimeout = 3 * time.Second
	// MaxWindow bounds PushOptions.Window (the emulator keeps at most 64
	// early writes waiting).
	MaxWindow = 64
	// DefaultWindow is the window otactl uses over WebSocket and MQTT: the
	// smallest of 1, 2, 4 … 32 that pushes through mosquitto on loopback
	// ten times as fast as one write per round trip (docs/benchmarks.md),
	// and below mosquitto's default of 20 QoS 1 messages in flight per
	// client, beyond which the broker queues them anyway.
	DefaultWindow = 16
	// DefaultHTTPWindow is the window otactl uses over HTTP, where each
	// write in flight is a connection the device must accept at once, and
	// a small device serves only a few.
	DefaultHTTPWindow = 4
)

// Envelope is what an OTA.Write frame carries besides its data, and the
// largest frame the link takes, for sizing chunks so that frames fit the
// device's limit. An *rpc.Client reports its own (rpc.Client.Envelope: the
// transport's frame budget and src/dst, the auth object of the actual
// credentials).
type Envelope = rpc.Envelope

// DefaultEnvelope is the envelope assumed for a Caller that does not report
// one: a 4096-byte limit, a 96-byte src, a 64-byte dst and an auth object
// with a 64-byte realm and user name, at the cost of ~11% of the largest
// possible chunk.
func DefaultEnvelope() Envelope {
	return Envelope{Limit: frame.MaxSize, Src: strings.Repeat("s", 96), Dst: strings.Repeat("d", 64),
		Auth: rpc.AuthReserve(strings.Repeat("r", 64), "", "")}
}

// enveloper is implemented by *rpc.Client.
type enveloper interface {
	Envelope() rpc.Envelope
}

// WriteFrame returns the OTA.Write request frame for a chunk of data at
// offset, in env, with the largest id the client may use: the frame whose
// size MaxChunkSize bounds. Exported for tests and diagnostics.
func WriteFrame(env Envelope, offset int64, data []byte) *frame.Frame {
	p, _ := json.Marshal(wire.WriteArgs{Offset: offset, Data: base64.StdEncoding.EncodeToString(data)})
	return &frame.Frame{ID: math.MaxInt64, Src: env.Src, Dst: env.Dst, Method: wire.OTAWrite, Params: p, Auth: env.Auth}
}

// MaxChunkSize returns the largest chunk whose OTA.Write frame (as
// WriteFrame builds it, for any offset below size) is at most limit bytes,
// base64 expansion included; 0 if not even 3 bytes fit. It is a multiple of
// 3, so only the last chunk's base64 carries padding. A limit of 0 means
// env.Limit (or frame.MaxSize).
func MaxChunkSize(limit int, size int64, env Envelope) int {
	if limit <= 0 {
		limit = env.Limit
	}
	if limit <= 0 {
		limit = frame.MaxSize
	}
	b, err := frame.Marshal(WriteFrame(env, max(size, 1), nil))
	if err != nil {
		return 0
	}
	budget := limit - len(b) // room for the base64 text
	if budget < 4 {
		return 0
	}
	return budget / 4 * 3
}

// PushOptions tune Push. Zero values mean defaults.
type PushOptions struct {
	// ChunkSize is the number of bundle bytes per OTA.Write. Zero means
	// the largest that keeps each frame within FrameLimit for Envelope
	// (MaxChunkSize). A given size is used as is.
	ChunkSize int
	// FrameLimit overrides the largest frame the device takes (default:
	// the Envelope's Limit, which the transport reports: 4096 bytes, less
	// a margin over serial).
	FrameLimit int
	// Envelope describes the frames' other fields for sizing chunks; nil
	// means the client's own (rpc.Client.Envelope, read once OTA.Status
	// answered, so that a device that wants authentication has named its
	// realm), or DefaultEnvelope for a Caller that reports none.
	Envelope *Envelope
	// CommitTimeout is how long the new firmware waits for Commit before
	// rolling back; zero means DefaultCommitTimeout, AutoCommit sends 0.
	CommitTimeout time.Duration
	// Timeout is the device's update watchdog (OTA.Begin "timeout"): it
	// aborts an update that makes no progress. Zero: DefaultUpdateTimeout.
	Timeout time.Duration
	// WriteTimeout bounds each OTA.Write attempt (default 20 s).
	WriteTimeout time.Duration
	// FirstWriteTimeout bounds OTA.Begin and every attempt of the first
	// OTA.Write, where devices erase flash (default 60 s).
	FirstWriteTimeout time.Duration
	// EndTimeout bounds OTA.End, where the device verifies what it wrote
	// (default 60 s).
	EndTimeout time.Duration
	// Tries is the number of attempts per chunk (default 3).
	Tries int
	// Progress, if set, gets the bytes the device acknowledged. It reports
	// sent == total only after OTA.End succeeded (not when its reply was
	// lost: EventNoReply says so instead).
	Progress func(sent, total int64)
	// Window is how many OTA.Write calls are kept in flight: 1 (the
	// default) waits for each reply before the next write, as mos does;
	// more hide the link's round trip (docs/benchmarks.md). Writes leave in
	// offset order; a device that gets one out of order refuses it naming
	// the offset it expects, and Push resends from there. Keep 1 on serial
	// links: the device's UART buffer holds one frame.
	Window int
	// Redial, if set, lets Push resume after a lost link: it closes the
	// client it was using (a serial port has one user at a time), dials
	// again with backoff, reads OTA.Status and, while the device's update
	// is alive, continues at the offset the device expects. Push closes
	// the clients it dialed before it returns. Without Redial a lost link
	// is retried over the same client, which only helps links that come
	// back by themselves (HTTP).
	Redial Dialer
	// ReconnectTimeout bounds the time spent regaining the link after it
	// was lost, or waiting for a device that stopped answering (default:
	// Timeout, after which the device's watchdog has ended the update).
	ReconnectTimeout time.Duration
	// AttemptTimeout bounds each dial and each call made while regaining
	// the link (default DefaultAttemptTimeout).
	AttemptTimeout time.Duration
	// Backoff spaces attempts to regain the link (default 250 ms, doubling
	// up to 5 s).
	Backoff Backoff
	// Device, if set, is the device to update: Push checks Sys.GetInfo
	// against it before OTA.Begin and on every answer after a lost link or
	// a failed write, before resuming; when another device answers, Push
	// stops with a *DeviceChangedError and sends that device nothing that
	// changes its state (no OTA.Write, no OTA.End).
	Device Identity
	// OnEvent, if set, gets EventBegin, EventRetry, EventReconnecting,
	// EventResumed, EventAbort, EventFinalizing, EventAccepted and
	// EventNoReply.
	OnEvent func(Event)
}

func (o *PushOptions) defaults() error {
	if o.ChunkSize < 0 {
		return fmt.Errorf("chunk size %d: must be positive", o.ChunkSize)
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = DefaultWriteTimeout
	}
	if o.FirstWriteTimeout <= 0 {
		o.FirstWriteTimeout = DefaultFirstWriteTimeout
	}
	if o.EndTimeout <= 0 {
		o.EndTimeout = DefaultEndTimeout
	}
	if o.Tries <= 0 {
		o.Tries = DefaultTries
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultUpdateTimeout
	}
	if o.Window <= 0 {
		o.Window = 1
	}
	if o.Window > MaxWindow {
		return fmt.Errorf("window %d: at most %d writes can be in flight", o.Window, MaxWindow)
	}
	if o.ReconnectTimeout <= 0 {
		o.ReconnectTimeout = o.Timeout
	}
	if o.AttemptTimeout <= 0 {
		o.AttemptTimeout = DefaultAttemptTimeout
	}
	if o.Backoff.Initial <= 0 {
		o.Backoff.Initial = 250 * time.Millisecond
	}
	if o.Backoff.Max < o.Backoff.Initial {
		o.Backoff.Max = max(5*time.Second, o.Backoff.Initial)
	}
	return nil
}

// PushResult describes a push that the device accepted.
type PushResult struct {
	Size      int64 `json:"size"`
	ChunkSize int   `json:"chunk_size"`
	Chunks    int   `json:"chunks"`
	// Retries counts write attempts beyond the first, over all chunks.
	Retries int `json:"retries"`
	// Resumes counts the times the push regained a lost link and went on
	// where the device was.
	Resumes int `json:"resumes"`
	// Accepted says whether the reply to OTA.End came (see Accepted).
	Accepted
	Elapsed time.Duration `json:"elapsed_ns"`
}

// Push sends a bundle of size bytes, read from r, through the RPC link with
// OTA.Begin, OTA.Write and OTA.End (docs/protocol.md, "Pushing a bundle"), for devices that
// cannot fetch a URL (serial links, closed networks).
//
// It starts only if OTA.Status is idle or shows a failed update (state 0 or
// 2); otherwise it returns an error wrapping ErrBusy and ErrUpdateFailed.
//
// Writes: up to opts.Window OTA.Write calls are in flight, in offset order.
// When one fails without a device error (no reply in time, link lost), Push
// finds out where the device stands before going on: it reads OTA.Status
// (over a new link from opts.Redial when the old one is gone, with backoff,
// for up to opts.ReconnectTimeout) and, while the device's update is still
// running, resumes at the offset the device expects: OTA.Status "offset"
// when the device reports it, else the last offset the device confirmed, a
// device's "Wrong offset N, expected M" reply then naming the right one.
// Resuming never re-enters an update that is not this push's: when the
// device was reset meanwhile (uptime), shows no update (idle) or a failed
// one, Push returns an *UpdateLostError (wrapping ErrUpdateFailed): nothing
// was applied. Each offset gets opts.Tries attempts.
//
// Abort: when the transfer fails for good, or ctx is cancelled, Push sends
// OTA.End (under its own short deadline, even if ctx is done) so the device
// leaves the update state at once instead of after its watchdog. This is
// safe: the device changes its boot state only when it finalises a
// complete bundle whose digests all verified, and a bundle cut short never
// has its end (the zip central directory), so OTA.End can only abort it; the
// inactive slot is left with garbage, the running firmware and the boot
// state are untouched. The error is a *PushError. (Only if the device in
// fact had every byte can that OTA.End succeed; the update is then applied
// and Push returns success.)
//
// A device refusal at OTA.Begin, OTA.Write or OTA.End (bad bundle, wrong
// platform, digest mismatch, firmware not committed) wraps ErrUpdateFailed
// and the *rpc.Error; the boot state is unchanged.
//
// Reboot: the device reboots right after finalising, so the reply to OTA.End
// may never come. When the link drops or OTA.End times out after all data
// was acknowledged, Push reports success with Accepted.Confirmed false and
// an EventNoReply: the device is probably rebooting, and WaitOutcome (not
// Push) decides whether the update took. (With opts.Redial, a device found
// still waiting for the end of the data gets OTA.End again.)
func (d *Device) Push(ctx context.Context, r io.ReaderAt, size int64, opts PushOptions) (PushResult, error) {
	start := time.Now()
	res := PushResult{Size: size}
	if size <= 0 {
		return res, errors.New("push: the bundle is empty")
	}
	if err := opts.defaults(); err != nil {
		return res, fmt.Errorf("push: %w", err)
	}
	if err := CheckTimeouts(opts.CommitTimeout, opts.Timeout); err != nil {
		return res, fmt.Errorf("push: %w", err)
	}

	// 1. Only start from idle or a failed update.
	sctx, cancel := context.WithTimeout(ctx, opts.WriteTimeout)
	st, err := d.Status(sctx)
	cancel()
	if err != nil {
		return res, fmt.Errorf("push: reading OTA.Status before starting: %w", err)
	}
	switch st.State {
	case StateIdle, StateError:
	case StateProgress:
		return res, fmt.Errorf("%w: %w: an update is already in progress (OTA.Status state 1, %d%%): wait for it to finish, or abort it with `otactl call OTA.End` (the boot state stays unchanged)", ErrUpdateFailed, ErrBusy, st.ProgressPercent)
	case StateSuccess:
		return res, fmt.Errorf("%w: %w: the device finished an update and is about to reboot (OTA.Status state 3): wait for it to come back", ErrUpdateFailed, ErrBusy)
	default:
		return res, fmt.Errorf("%w: %w: unknown OTA.Status state %d: not starting", ErrUpdateFailed, ErrBusy, st.State)
	}
	if err := d.sizeChunks(&opts, size); err != nil {
		return res, fmt.Errorf("push: %w", err)
	}
	res.ChunkSize = opts.ChunkSize

	// 2. Begin, on the device the update is for.
	ictx, cancel := context.WithTimeout(ctx, opts.WriteTimeout)
	err = opts.Device.check(ictx, d)
	cancel()
	if err != nil {
		var dc *DeviceChangedError
		if errors.As(err, &dc) {
			dc.While, dc.NothingInstalled = "before the push started", true
			dc.Then = fmt.Sprintf("nothing was sent to device %s either", dc.Want)
			return res, dc
		}
		return res, fmt.Errorf("push: reading Sys.GetInfo before starting: %w", err)
	}
	begin := wire.BeginArgs{Timeout: seconds(opts.Timeout), CommitTimeout: commitSeconds(opts.CommitTimeout), Size: size}
	bctx, cancel := context.WithTimeout(ctx, opts.FirstWriteTimeout)
	_, err = d.c.Call(bctx, wire.OTABegin, begin)
	cancel()
	if err != nil {
		if !isDeviceError(err) {
			// The device may have started the update without our seeing
			// the reply: abort it so it does not stay busy.
			_ = d.abort(ctx, opts, 0, size, err)
			return res, fmt.Errorf("push: OTA.Begin: %w", err)
		}
		return res, d.rejected(ctx, "the device refused to start the update (OTA.Begin)", err)
	}
	msg := fmt.Sprintf("sending %d bytes in chunks of %d", size, opts.ChunkSize)
	if opts.Window > 1 {
		msg += fmt.Sprintf(", up to %d writes in flight", opts.Window)
	}
	emit(opts.OnEvent, Event{Kind: EventBegin, Total: size, Msg: msg})

	// 3. Write.
	p := &pusher{dev: d, opts: opts, r: r, size: size, res: &res, begunAt: time.Now(),
		buf: make([]byte, opts.ChunkSize)}
	defer p.closeOwn()
	if err := p.transfer(ctx); err != nil || p.finished {
		res.Elapsed = time.Since(start)
		return res, err
	}

	// 4. End.
	err = p.end(ctx)
	res.Elapsed = time.Since(start)
	return res, err
}

// sizeChunks completes opts with the envelope of the frames (the client's,
// now that it has made a call) and the chunk size.
func (d *Device) sizeChunks(opts *PushOptions, size int64) error {
	if opts.Envelope == nil {
		env := DefaultEnvelope()
		if e, ok := d.c.(enveloper); ok {
			env = e.Envelope()
		}
		opts.Envelope = &env
	}
	if opts.FrameLimit <= 0 {
		opts.FrameLimit = opts.Envelope.Limit
	}
	if opts.FrameLimit <= 0 {
		opts.FrameLimit = frame.MaxSize
	}
	largest := MaxChunkSize(opts.FrameLimit, size, *opts.Envelope)
	if opts.ChunkSize == 0 {
		opts.ChunkSize = largest
		if opts.ChunkSize <= 0 {
			return fmt.Errorf("frame limit %d bytes leaves no room for data in an OTA.Write frame: raise the limit", opts.FrameLimit)
		}
	} else if opts.ChunkSize > largest {
		emit(opts.OnEvent, Event{Kind: EventWarning, Msg: fmt.Sprintf("warning: --chunk-size %d makes frames larger than the device's %d-byte limit (largest that fits: %d); a real device drops them",
			opts.ChunkSize, frame.MaxSize, largest)})
	}
	return nil
}

// retryPause is the shortest time between the starts of the first two
// tries of a chunk over a link that stays up (a write that failed at once);
// it doubles for each further try.
const retryPause = time.Second

// abort sends OTA.End to end a failed push, under its own deadline even if
// ctx is done. It returns OTA.End's error: normally an *rpc.Error (the
// device aborted the incomplete update).
func (d *Device) abort(ctx context.Context, opts PushOptions, off, total int64, cause error) error {
	emit(opts.OnEvent, Event{Kind: EventAbort, Sent: off, Total: total, Err: cause,
		Msg: "aborting the update (OTA.End); the boot state stays unchanged"})
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(opts.WriteTimeout, 10*time.Second))
	defer cancel()
	_, err := d.c.Call(actx, wire.OTAEnd, nil)
	return err
}

// expectedOffset returns the offset a device's refusal of a write names as
// the one it expects ("Wrong offset 0, expected 2652").
func expectedOffset(err error) (int64, bool) {
	var re *rpc.Error
	if !errors.As(err, &re) {
		return 0, false
	}
	_, n, ok := wire.ParseWrongOffset(re.Message)
	return n, ok
}
