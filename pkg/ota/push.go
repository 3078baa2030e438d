package ota

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

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
)

// Envelope is what an OTA.Write frame carries besides its data, for sizing
// chunks so that frames fit the device's limit.
type Envelope struct {
	// Src and Dst exactly as the transport will send them ("" = omitted).
	// MQTT sends src "<device_id>/rpc-resp/<client_id>" and dst the device id.
	Src, Dst string
	// Auth reserves room for an in-frame digest "auth" object (realm and
	// user name up to 64 bytes each), sent when --rpc-creds is used.
	Auth bool
}

// DefaultEnvelope is the envelope assumed when PushOptions.Envelope is nil:
// a 96-byte src, a 64-byte dst and an auth object. It fits every transport
// otactl has with device ids up to 63 bytes, at the cost of ~11% of the
// largest possible chunk.
func DefaultEnvelope() Envelope {
	return Envelope{Src: strings.Repeat("s", 96), Dst: strings.Repeat("d", 64), Auth: true}
}

// writeParams are the arguments of OTA.Write.
type writeParams struct {
	Offset int64  `json:"offset"`
	Data   string `json:"data"`
}

// WriteFrame returns the OTA.Write request frame for a chunk of data at
// offset, in env, with the largest id the client may use: the frame whose
// size MaxChunkSize bounds. Exported for tests and diagnostics.
func WriteFrame(env Envelope, offset int64, data []byte) *frame.Frame {
	p, _ := json.Marshal(writeParams{Offset: offset, Data: base64.StdEncoding.EncodeToString(data)})
	f := &frame.Frame{ID: math.MaxInt64, Src: env.Src, Dst: env.Dst, Method: "OTA.Write", Params: p}
	if env.Auth {
		long := strings.Repeat("r", 64)
		f.Auth = &frame.Auth{
			Realm: long, Username: long,
			Nonce: math.MaxInt64, CNonce: math.MaxInt64,
			Algorithm: "SHA-256",
			Response:  strings.Repeat("f", 64), // SHA-256 in hex
		}
	}
	return f
}

// MaxChunkSize returns the largest chunk whose OTA.Write frame (as
// WriteFrame builds it, for any offset below size) is at most limit bytes,
// base64 expansion included; 0 if not even 3 bytes fit. It is a multiple of
// 3, so only the last chunk's base64 carries padding.
func MaxChunkSize(limit int, size int64, env Envelope) int {
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
	// FrameLimit is the device's rpc.max_frame_size (default frame.MaxSize,
	// 4096).
	FrameLimit int
	// Envelope describes the frames' other fields for sizing chunks; nil
	// means DefaultEnvelope.
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
	// OnEvent, if set, gets EventBegin, EventRetry, EventAbort,
	// EventFinalizing, EventAccepted and EventNoReply.
	OnEvent func(Event)
}

func (o *PushOptions) defaults(size int64) error {
	if o.FrameLimit <= 0 {
		o.FrameLimit = frame.MaxSize
	}
	if o.Envelope == nil {
		env := DefaultEnvelope()
		o.Envelope = &env
	}
	if o.ChunkSize < 0 {
		return fmt.Errorf("chunk size %d: must be positive", o.ChunkSize)
	}
	if o.ChunkSize == 0 {
		o.ChunkSize = MaxChunkSize(o.FrameLimit, size, *o.Envelope)
		if o.ChunkSize <= 0 {
			return fmt.Errorf("frame limit %d bytes leaves no room for data in an OTA.Write frame: raise the limit", o.FrameLimit)
		}
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
	return nil
}

// PushResult describes a push that the device accepted.
type PushResult struct {
	Size      int64 `json:"size"`
	ChunkSize int   `json:"chunk_size"`
	Chunks    int   `json:"chunks"`
	// Retries counts write attempts beyond the first, over all chunks.
	Retries int `json:"retries"`
	// Accepted says whether the reply to OTA.End came (see Accepted).
	Accepted
	Elapsed time.Duration `json:"elapsed_ns"`
}

// Push sends a bundle of size bytes, read from r, through the RPC link with
// OTA.Begin, OTA.Write and OTA.End (wire-protocol.md §7), for devices that
// cannot fetch a URL (serial links, closed networks).
//
// It starts only if OTA.Status is idle or shows a failed update (state 0 or
// 2); otherwise it returns an error wrapping ErrBusy and ErrUpdateFailed.
// Each chunk is tried up to opts.Tries times at the same offset (a try
// that failed at once is retried after a pause of 1 s, then 2 s, ..., so
// that the tries outlast a brief loss of the link); a device error
// (*rpc.Error) is not retried, since the device has then aborted, except
// that "Wrong offset X, expected Y" on a retry, with Y the end of the
// chunk, means an earlier try landed and only its reply was lost.
//
// Abort: when a chunk fails for good, or ctx is cancelled, Push sends
// OTA.End (under its own short deadline, even if ctx is done) so the device
// leaves the update state at once instead of after its watchdog. This is
// safe: the device changes its boot state only when it finalises a
// complete bundle whose digests all verified, and a bundle cut short never
// has its end (the zip central directory), so OTA.End can only abort it; the
// inactive slot is left with garbage, the running firmware and the boot
// state are untouched. A later push starts over from offset 0 with a new
// OTA.Begin; nothing ever resumes into a half-written slot. The error is a
// *PushError. (Only if the failed chunk was the last and the device had in
// fact received it can that OTA.End succeed; the update is then applied and
// Push returns success.)
//
// A device refusal at OTA.Begin or OTA.End (bad bundle, wrong platform,
// digest mismatch, firmware not committed) wraps ErrUpdateFailed and the
// *rpc.Error; the boot state is unchanged.
//
// Reboot: the device reboots right after finalising, so the reply to OTA.End
// may never come. When the link drops or OTA.End times out after all data
// was acknowledged, Push reports success with Accepted.Confirmed false and
// an EventNoReply: the device is probably rebooting, and WaitOutcome (not
// Push) decides whether the update took.
func (d *Device) Push(ctx context.Context, r io.ReaderAt, size int64, opts PushOptions) (PushResult, error) {
	start := time.Now()
	res := PushResult{Size: size}
	if size <= 0 {
		return res, errors.New("push: the bundle is empty")
	}
	if err := opts.defaults(size); err != nil {
		return res, fmt.Errorf("push: %w", err)
	}
	if err := CheckTimeouts(opts.CommitTimeout, opts.Timeout); err != nil {
		return res, fmt.Errorf("push: %w", err)
	}
	res.ChunkSize = opts.ChunkSize
	report := func(sent int64) {
		if opts.Progress != nil {
			opts.Progress(sent, size)
		}
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

	// 2. Begin.
	begin := struct {
		Timeout       int64 `json:"timeout"`
		CommitTimeout int64 `json:"commit_timeout"`
		Size          int64 `json:"size"`
	}{Timeout: seconds(opts.Timeout), CommitTimeout: commitSeconds(opts.CommitTimeout), Size: size}
	bctx, cancel := context.WithTimeout(ctx, opts.FirstWriteTimeout)
	_, err = d.c.Call(bctx, "OTA.Begin", begin)
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
	emit(opts.OnEvent, Event{Kind: EventBegin, Total: size,
		Msg: fmt.Sprintf("sending %d bytes in chunks of %d", size, opts.ChunkSize)})

	// 3. Write.
	buf := make([]byte, opts.ChunkSize)
	for off := int64(0); off < size; {
		n := int(min(int64(opts.ChunkSize), size-off))
		var werr error
		if k, rerr := r.ReadAt(buf[:n], off); k < n {
			if rerr == nil || rerr == io.EOF {
				rerr = io.ErrUnexpectedEOF
			}
			werr = fmt.Errorf("reading the bundle: %w", rerr)
		} else {
			werr = d.write(ctx, opts, &res, off, buf[:n])
		}
		if werr != nil {
			res, err := d.failed(ctx, opts, res, off, werr, report)
			res.Elapsed = time.Since(start)
			return res, err
		}
		res.Chunks++
		off += int64(n)
		if off < size {
			report(off) // the last chunk is reported once OTA.End succeeded
		}
	}

	// 4. End.
	emit(opts.OnEvent, Event{Kind: EventFinalizing, Sent: size, Total: size,
		Msg: "all data sent; the device is verifying the bundle"})
	ectx, cancel := context.WithTimeout(ctx, opts.EndTimeout)
	_, err = d.c.Call(ectx, "OTA.End", nil)
	cancel()
	res.Elapsed = time.Since(start)
	switch {
	case err == nil:
		report(size)
		emit(opts.OnEvent, Event{Kind: EventAccepted, Sent: size, Total: size,
			Msg: "the device accepted the update and is rebooting"})
		res.Confirmed = true
		return res, nil
	case lostLink(ctx, err):
		// Not reported as 100%: the device did not confirm.
		emit(opts.OnEvent, Event{Kind: EventNoReply, Err: err, Sent: size, Total: size,
			Msg: "no reply to OTA.End; the device is probably rebooting"})
		return res, nil
	case ctx.Err() != nil:
		return res, fmt.Errorf("push: OTA.End: %w", err)
	}
	return res, fmt.Errorf("%w: the device rejected the bundle when finalising (OTA.End): %w; its boot state is unchanged", ErrUpdateFailed, err)
}

// retryPause is the shortest time between the starts of the first two
// tries of a chunk; it doubles for each further try.
const retryPause = time.Second

// write sends one chunk, with retries at the same offset.
func (d *Device) write(ctx context.Context, opts PushOptions, res *PushResult, off int64, data []byte) error {
	params := writeParams{Offset: off, Data: base64.StdEncoding.EncodeToString(data)}
	timeout := opts.WriteTimeout
	if off == 0 {
		timeout = opts.FirstWriteTimeout
	}
	var err error
	var took time.Duration
	for attempt := 1; attempt <= opts.Tries; attempt++ {
		if attempt > 1 {
			// A write that failed at once (connection refused, link
			// briefly gone) is retried after a pause (1 s, 2 s, ...), so
			// that the tries span more than a glitch.
			if pause := retryPause << (attempt - 2); took < pause {
				if serr := sleep(ctx, pause-took); serr != nil {
					return fmt.Errorf("%w (%v)", serr, err)
				}
			}
			res.Retries++
			emit(opts.OnEvent, Event{Kind: EventRetry, Sent: off, Total: res.Size, Attempt: attempt, Err: err,
				Msg: fmt.Sprintf("write at offset %d failed (%v); retrying, attempt %d of %d", off, err, attempt, opts.Tries)})
		}
		wctx, cancel := context.WithTimeout(ctx, timeout)
		t0 := time.Now()
		_, err = d.c.Call(wctx, "OTA.Write", params)
		took = time.Since(t0)
		cancel()
		if err != nil && attempt > 1 && alreadyWritten(err, off+int64(len(data))) {
			return nil // an earlier attempt landed; only its reply was lost
		}
		if err == nil || isDeviceError(err) {
			return err
		}
		if cerr := ctx.Err(); cerr != nil {
			return fmt.Errorf("%w (%v)", cerr, err)
		}
	}
	return err
}

// failed ends a push whose chunk at off failed for good: it aborts the
// update with OTA.End and returns the *PushError, unless OTA.End succeeds,
// which means the device had the whole bundle after all (the last chunk
// landed, only its replies were lost) and finalised it.
func (d *Device) failed(ctx context.Context, opts PushOptions, res PushResult, off int64, cause error, report func(int64)) (PushResult, error) {
	endErr := d.abort(ctx, opts, off, res.Size, cause)
	if endErr == nil {
		res.Chunks = int((res.Size + int64(opts.ChunkSize) - 1) / int64(opts.ChunkSize))
		res.Confirmed = true
		report(res.Size)
		emit(opts.OnEvent, Event{Kind: EventAccepted, Sent: res.Size, Total: res.Size,
			Msg: "the device had the whole bundle, accepted the update and is rebooting"})
		return res, nil
	}
	return res, &PushError{Offset: off, Err: cause, Rejected: isDeviceError(cause), Aborted: isDeviceError(endErr)}
}

// abort sends OTA.End to end a failed push, under its own deadline even if
// ctx is done. It returns OTA.End's error: normally an *rpc.Error (the
// device aborted the incomplete update).
func (d *Device) abort(ctx context.Context, opts PushOptions, off, total int64, cause error) error {
	emit(opts.OnEvent, Event{Kind: EventAbort, Sent: off, Total: total, Err: cause,
		Msg: "aborting the update (OTA.End); the boot state stays unchanged"})
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(opts.WriteTimeout, 10*time.Second))
	defer cancel()
	_, err := d.c.Call(actx, "OTA.End", nil)
	return err
}

// wrongOffset matches a device's reply to a write at an offset it already
// has, e.g. "Wrong offset 0, expected 2652".
var wrongOffset = regexp.MustCompile(`(?i)expected\D{0,3}(\d+)`)

// alreadyWritten reports whether err is the device refusing a retried write
// because it already holds the data up to end (the earlier attempt landed,
// its reply was lost).
func alreadyWritten(err error, end int64) bool {
	var re *rpc.Error
	if !errors.As(err, &re) {
		return false
	}
	m := wrongOffset.FindStringSubmatch(re.Message)
	if m == nil {
		return false
	}
	n, perr := strconv.ParseInt(m[1], 10, 64)
	return perr == nil && n == end
}
