package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/otactl/otactl/internal/human"
	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/rpc"
)

// withDevice connects with the global --timeout bounding the whole
// exchange, and runs fn.
//
// Where more than one device can answer to one address (MQTT), it then
// waits the client's settle time for a second device's late replies before
// it lets fn's output out or its caller go on to change the device
// (update and push call it for their pre-check): two devices with one id
// stop the command with exit 1 (docs/transports.md, "More than one device").
func (f *Factory) withDevice(ctx context.Context, fn func(ctx context.Context, c *rpc.Client, d *ota.Device) error) error {
	return f.withDeviceTimeout(ctx, f.G.Timeout, fn)
}

// withDeviceTimeout is withDevice with another bound than --timeout.
func (f *Factory) withDeviceTimeout(ctx context.Context, timeout time.Duration, fn func(ctx context.Context, c *rpc.Client, d *ota.Device) error) error {
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := f.Connect(tctx)
	if err != nil {
		return deviceErr(err, timeout)
	}
	defer c.Close()
	if !c.Shared() {
		return deviceErr(fn(tctx, c, ota.New(c)), timeout)
	}
	out := f.IO.Out
	var held bytes.Buffer
	f.IO.Out = &held
	err = fn(tctx, c, ota.New(c))
	f.IO.Out = out
	if dup := c.Err(); dup != nil {
		return dup
	}
	if err != nil {
		return deviceErr(err, timeout)
	}
	if err := c.Settle(ctx, c.SettleTime()); err != nil {
		return err
	}
	_, err = out.Write(held.Bytes())
	return err
}

// dialer returns an ota.Dialer over the global flags, for workflows that
// reconnect (after a reboot).
func (f *Factory) dialer() ota.Dialer {
	return func(ctx context.Context) (*rpc.Client, error) { return f.Connect(ctx) }
}

// out prints a line on stdout.
func (f *Factory) out(format string, args ...any) {
	fmt.Fprintf(f.IO.Out, format+"\n", args...)
}

// note prints a progress or diagnostic line on stderr (not in --json mode
// unless verbose; scripts read stdout only).
func (f *Factory) note(format string, args ...any) {
	fmt.Fprintf(f.IO.ErrOut, format+"\n", args...)
}

// commitTimeoutValue is a --commit-timeout flag: seconds ("300") or a Go
// duration ("5m"). Zero means "commit at once at boot" (no safety net).
type commitTimeoutValue struct {
	d   time.Duration
	set bool
}

func (v *commitTimeoutValue) String() string {
	if !v.set {
		return "300"
	}
	return strconv.FormatInt(int64(v.d/time.Second), 10)
}

func (v *commitTimeoutValue) Set(s string) error {
	d, err := parseSeconds(s)
	if err == nil && d > ota.MaxTimeout {
		err = errTooLong
	}
	if err != nil {
		return fmt.Errorf("%v: the commit timeout %s, or 0 (commit at boot)", err, commitRange)
	}
	// The device counts whole seconds; round a fraction up, never to 0.
	v.d, v.set = (d + time.Second - 1).Truncate(time.Second), true
	return nil
}

// commitRange names the commit timeouts a device can hold.
var commitRange = fmt.Sprintf("must be from 1 to %d seconds (about 24 days: the device arms its timer in milliseconds in a signed 32-bit number)", ota.MaxTimeoutSeconds)

// errTooLong is parseSeconds' verdict on a value beyond what a device holds.
var errTooLong = errors.New("too long")

func (v *commitTimeoutValue) Type() string { return "seconds" }

// otaValue converts the flag for pkg/ota: unset → default (300 s), 0 →
// AutoCommit.
func (v *commitTimeoutValue) otaValue() time.Duration {
	if !v.set {
		return 0
	}
	if v.d == 0 {
		return ota.AutoCommit
	}
	return v.d
}

// seconds returns the flag in whole seconds (default 300).
func (v *commitTimeoutValue) seconds() int {
	if !v.set {
		return int(ota.DefaultCommitTimeout / time.Second)
	}
	return int(v.d / time.Second)
}

// parseSeconds reads "300" (seconds) or a Go duration ("5m", "90s"). A
// value that does not fit a time.Duration is an error, never a wrapped
// number.
func parseSeconds(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if n, err := strconv.ParseInt(s, 10, 64); err == nil || errors.Is(err, strconv.ErrRange) {
		switch {
		case err != nil && strings.HasPrefix(s, "-"), n < 0:
			return 0, errors.New("must not be negative")
		case err != nil, n > int64(math.MaxInt64/time.Second):
			return 0, errTooLong
		}
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		if strings.Contains(err.Error(), "invalid duration") && looksLikeDuration(s) {
			return 0, errTooLong // time.ParseDuration's overflow
		}
		return 0, fmt.Errorf("want seconds (300) or a duration (5m)")
	}
	if d < 0 {
		return 0, fmt.Errorf("must not be negative")
	}
	return d, nil
}

// looksLikeDuration reports whether s is made of what a Go duration is made
// of (digits, a dot, unit letters), so that an error parsing it can only be
// an overflow.
func looksLikeDuration(s string) bool {
	s = strings.TrimPrefix(s, "+")
	if s == "" || s[0] == '-' {
		return false
	}
	return strings.Trim(s, "0123456789.nsuµmh") == "" && strings.ContainsAny(s, "0123456789")
}

// humanDuration prints 4m52s, 12s, 1h2m (internal/human: the same words
// as pkg/ota's reports).
func humanDuration(d time.Duration) string { return human.Duration(d) }

// rawJSON parses a result so it can be embedded in a JSON document.
func rawJSON(b []byte) json.RawMessage {
	if len(b) == 0 {
		return json.RawMessage("null")
	}
	return json.RawMessage(b)
}

// preciseDuration prints short durations with sub-second precision (0.42s)
// and longer ones like humanDuration.
func preciseDuration(d time.Duration) string { return human.PreciseDuration(d) }

// secondsFlag is a duration flag that also takes plain seconds: "600",
// "90s" and "10m" all work. A non-zero max bounds it (a value the device
// must hold).
type secondsFlag struct {
	d   *time.Duration
	max time.Duration
	// rangeText says what is accepted, for the error.
	rangeText string
}

func (s secondsFlag) String() string {
	if s.d == nil {
		return ""
	}
	return humanDuration(*s.d)
}

func (s secondsFlag) Set(v string) error {
	d, err := parseSeconds(v)
	if err == nil && s.max > 0 && d > s.max {
		err = errTooLong
	}
	if err != nil && s.rangeText != "" {
		return fmt.Errorf("%v: %s", err, s.rangeText)
	}
	if err != nil {
		return err
	}
	*s.d = d
	return nil
}

func (s secondsFlag) Type() string { return "duration" }
