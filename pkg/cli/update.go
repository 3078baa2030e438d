package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/ota/bundle"
	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/transport"
)

// UpdateOptions are the inputs shared by `otactl update` and `otactl push`.
type UpdateOptions struct {
	F             *Factory
	URL           string
	File          string
	CommitTimeout commitTimeoutValue
	UpdateTimeout time.Duration
	Commit        bool
	NoWait        bool
	HealthMethod  string
	ServeAddr     string
	Force         bool
	ChunkSize     int
	Sig           sigCheckFlags // --pubkey, --sig-req-mask (signature.go)
}

func addOutcomeFlags(cmd *cobra.Command, o *UpdateOptions) {
	fl := cmd.Flags()
	fl.Var(&o.CommitTimeout, "commit-timeout", "seconds the new firmware waits for 'otactl commit' before the device rolls back (0 = commit at boot, needs --force)")
	o.UpdateTimeout = ota.DefaultUpdateTimeout
	fl.Var(secondsFlag{d: &o.UpdateTimeout, max: ota.MaxTimeout, rangeText: updateRange}, "update-timeout", "device watchdog: abort the update if it makes no progress for this long (seconds, or 10m)")
	fl.BoolVar(&o.Commit, "commit", false, "commit once the new firmware answers (after --health-method, if given)")
	fl.BoolVar(&o.NoWait, "no-wait", false, "return when the device accepted the bundle, like mos, without waiting for the reboot")
	fl.StringVar(&o.HealthMethod, "health-method", "", "with --commit: RPC method the new firmware must answer without error before it is committed")
	fl.BoolVar(&o.Force, "force", false, "allow --commit-timeout 0 (the new firmware commits itself at boot: no rollback)")
	o.Sig.add(fl)
}

// updateRange names the update watchdogs a device can hold.
var updateRange = fmt.Sprintf("must be from 1 to %d seconds (about 24 days: the device arms its watchdog in milliseconds in a signed 32-bit number)", ota.MaxTimeoutSeconds)

func (o *UpdateOptions) check() error {
	if o.CommitTimeout.set && o.CommitTimeout.d == 0 && !o.Force {
		return usageErrorf("--commit-timeout 0 makes the new firmware commit itself at boot, so a bad firmware cannot roll back; add --force if you mean it")
	}
	if o.HealthMethod != "" && !o.Commit {
		return usageErrorf("--health-method goes with --commit")
	}
	if o.NoWait && o.Commit {
		return usageErrorf("--commit needs to wait for the new firmware: drop --no-wait")
	}
	if o.UpdateTimeout < time.Second {
		return usageErrorf("--update-timeout %s", updateRange)
	}
	return nil
}

// NewCmdUpdate builds `otactl update`.
func NewCmdUpdate(f *Factory) *cobra.Command {
	o := &UpdateOptions{F: f}
	cmd := &cobra.Command{
		Use:   "update (--url URL | --file FW.ZIP) [--commit] [--commit-timeout S]",
		Short: "Update the device from a URL or a local bundle, and wait for the outcome",
		Long: `Update the device with OTA.Update: it downloads the bundle into its spare
slot, checks it, and reboots into it, uncommitted. otactl then waits until the
device answers again and tells what booted:

  - the new firmware, uncommitted: with --commit otactl commits it (after
    --health-method, if given); without, it says how long the device waits for
    'otactl commit' before it rolls back by itself;
  - the old firmware: the update did not take (exit 6).

--file serves a local bundle to the device from a one-shot HTTP server on this
machine (--serve-addr, default: this machine's address on the route to the
device, any free port). --no-wait returns when the device accepted the bundle.`,
		Example: `  otactl --port http://192.168.4.1/rpc update --file fw.zip --commit
  otactl --port mqtt://broker/esp32_0A1B2C update --url https://fw.example.com/2.0.0/fw.zip --commit-timeout 600
  otactl update --file fw.zip --commit --health-method App.Health --json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if (o.URL == "") == (o.File == "") {
				return usageErrorf("update needs exactly one of --url URL or --file FW.ZIP")
			}
			if err := o.check(); err != nil {
				return err
			}
			return runUpdate(cmd.Context(), o)
		},
	}
	addOutcomeFlags(cmd, o)
	cmd.Flags().StringVar(&o.URL, "url", "", "bundle URL the device downloads (http or https)")
	cmd.Flags().StringVar(&o.File, "file", "", "local bundle to serve to the device")
	cmd.Flags().StringVar(&o.ServeAddr, "serve-addr", "", "with --file: HOST[:PORT] of this machine that the device can reach")
	return cmd
}

// localBundle checks a bundle file before sending it and returns what the
// new firmware will be.
func localBundle(path string) (*bundle.Report, error) {
	fh, err := openBundle(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	rep, err := bundle.Inspect(fh)
	if err != nil {
		return nil, &ExitError{Code: ExitUpdate, Err: fmt.Errorf("%s is not a valid bundle, nothing was sent: %w", path, err)}
	}
	if len(rep.Problems) > 0 {
		return nil, &ExitError{Code: ExitUpdate, Err: fmt.Errorf("%s is corrupt, nothing was sent: %w (check with 'otactl bundle verify')", path, rep.Problems[0])}
	}
	return rep, nil
}

// prepare reads the device's state before an update and refuses what the
// device would refuse, with the reason in words.
func (o *UpdateOptions) prepare(ctx context.Context, man *bundle.Manifest) (ota.Observation, error) {
	f := o.F
	var before ota.Observation
	err := f.withDevice(ctx, func(ctx context.Context, c *rpc.Client, d *ota.Device) error {
		var err error
		before, err = d.Observe(ctx)
		return err
	})
	if err != nil {
		return before, err
	}
	if !before.Boot.IsCommitted {
		return before, &ExitError{Code: ExitUpdate, Err: fmt.Errorf("%w: the device runs uncommitted firmware on slot %d: run 'otactl commit' to keep it or 'otactl revert' to go back, then update", ota.ErrUpdateFailed, before.Boot.ActiveSlot)}
	}
	if man != nil && before.Info.Arch != "" {
		if err := man.CheckPlatform(before.Info.Arch); err != nil {
			return before, &ExitError{Code: ExitUpdate, Err: fmt.Errorf("%w: the bundle is for %s but the device is %s; nothing was sent", ota.ErrUpdateFailed, man.Platform, before.Info.Arch)}
		}
	}
	return before, nil
}

func runUpdate(ctx context.Context, o *UpdateOptions) error {
	f := o.F
	var expect ota.Firmware
	var man *bundle.Manifest
	updateURL := o.URL
	if o.File != "" {
		rep, err := localBundle(o.File)
		if err != nil {
			return err
		}
		if err := o.Sig.checkSignatures(o.File, rep); err != nil {
			return err
		}
		man = rep.Manifest
		expect = ota.Firmware{Version: man.Version, BuildID: man.BuildID}
	} else if u, err := url.Parse(o.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return usageErrorf("--url must be an http:// or https:// URL the device can reach")
	} else if err := o.Sig.checkSignatures(o.URL, nil); err != nil {
		return err
	}
	before, err := o.prepare(ctx, man)
	if err != nil {
		return err
	}
	bar := f.newProgressBar("downloading")
	served := false // --file: the bar follows the bytes the device fetched
	if o.File != "" {
		srv, err := serveOnce(o.File, o.ServeAddr, f.G.Port, func(sent, total int64) {
			// The last byte is shown once the device said it is done: it
			// still checks what it downloaded.
			bar.Bytes(min(sent, total-1), total)
		})
		if err != nil {
			return err
		}
		defer srv.Close()
		updateURL = srv.URL
		served = true
		f.progressNote("serving %s at %s", o.File, srv.URL)
	}

	var accepted ota.Accepted
	err = func() error {
		// The device answers OTA.Update only when the download is done: give
		// it as long as its own watchdog, plus the usual timeout.
		uctx, cancel := context.WithTimeout(ctx, o.UpdateTimeout+f.G.Timeout)
		defer cancel()
		c, err := f.Connect(uctx)
		if err != nil {
			return err
		}
		defer c.Close()
		accepted, err = ota.New(c).Update(uctx, ota.UpdateArgs{
			URL: updateURL, CommitTimeout: o.CommitTimeout.otaValue(), Timeout: o.UpdateTimeout,
			OnEvent: func(ev ota.Event) {
				if ev.Kind == ota.EventDownload && !served {
					bar.Percent(ev.Percent)
				}
			},
		})
		return err
	}()
	bar.Done()
	if err != nil {
		if ctx.Err() != nil {
			return &InterruptedError{Err: err, Msg: o.interruptedDownload()}
		}
		return updateRejected(err, o.UpdateTimeout+f.G.Timeout)
	}
	return o.finish(ctx, before, accepted, expect, nil)
}

// interruptedDownload says what becomes of an OTA.Update that otactl
// stopped waiting for: the device cannot be told to stop it.
func (o *UpdateOptions) interruptedDownload() string {
	if o.File != "" {
		return "otactl stopped serving the bundle, so the device's download fails and its boot state stays unchanged, unless it had already received the whole bundle: check with 'otactl status' and 'otactl bootstate'"
	}
	return "the device goes on with the update by itself (OTA.Update cannot be called off); if the bundle is good, it reboots into it uncommitted, and falls back unless you run 'otactl commit': check with 'otactl status' and 'otactl bootstate'"
}

// updateRejected turns a refused or failed transfer into exit code 6 while
// keeping the device's words.
func updateRejected(err error, timeout time.Duration) error {
	if errors.Is(err, rpc.ErrAuth) { // the device refused the caller (exit 4), not the bundle
		return fmt.Errorf("%w; its boot state is unchanged", err)
	}
	if errors.Is(err, ota.ErrBusy) { // already says what to do, and that the boot state stays
		return &ExitError{Code: ExitUpdate, Err: err}
	}
	if errors.Is(err, ota.ErrUpdateFailed) { // already says the update did not take
		return &ExitError{Code: ExitUpdate, Err: fmt.Errorf("%w; its boot state is unchanged", err)}
	}
	var re *rpc.Error
	if errors.As(err, &re) {
		return &ExitError{Code: ExitUpdate, Err: fmt.Errorf("the device did not take the update: %w; its boot state is unchanged", err)}
	}
	return deviceErr(err, timeout)
}

// transferInfo is what the push reports in --json.
type transferInfo struct {
	Bytes     int64   `json:"bytes"`
	ChunkSize int     `json:"chunk_size"`
	Chunks    int     `json:"chunks"`
	Retries   int     `json:"retries"`
	Seconds   float64 `json:"seconds"`
	BytesPerS float64 `json:"bytes_per_second"`
}

// updateResult is the --json document of update and push.
type updateResult struct {
	Result         string          `json:"result"`
	Committed      bool            `json:"committed"`
	Reason         string          `json:"reason,omitempty"`
	Before         ota.BootState   `json:"before"`
	After          *ota.BootState  `json:"after,omitempty"`
	FromVersion    string          `json:"from_version"`
	Version        string          `json:"version,omitempty"`
	BuildID        string          `json:"build_id,omitempty"`
	CommitDeadline *time.Time      `json:"commit_deadline,omitempty"`
	CommitIn       *float64        `json:"commit_timeout_left_seconds,omitempty"`
	Transfer       *transferInfo   `json:"transfer,omitempty"`
	Info           json.RawMessage `json:"info,omitempty"`
}

// finish waits for the device to come back after an accepted update, says
// what booted, and commits when asked.
func (o *UpdateOptions) finish(ctx context.Context, before ota.Observation, accepted ota.Accepted, expect ota.Firmware, tr *transferInfo) error {
	f := o.F
	res := updateResult{Result: "accepted", Before: before.Boot, FromVersion: before.Info.FWVersion, Transfer: tr}
	if o.NoWait {
		if f.G.JSON {
			return writeJSON(f.IO.Out, res)
		}
		f.out("the device accepted the update and is rebooting into it (not waiting: check with 'otactl bootstate').")
		return nil
	}
	f.progressNote("bundle accepted; waiting for the device to reboot and answer…")
	wctx, cancel := context.WithTimeout(ctx, f.rebootTimeout()+verdictMargin)
	defer cancel()
	out, c, err := ota.WaitOutcome(wctx, ota.WaitOptions{
		Dial: f.dialer(), Before: before, Accepted: accepted.Confirmed, Expect: expect,
		RebootTimeout: f.rebootTimeout(),
		OnEvent: func(ev ota.Event) {
			if f.G.Verbose && ev.Msg != "" {
				f.note("%s", ev.Msg)
			}
		},
	})
	if c != nil {
		defer c.Close()
	}
	if out == nil {
		if ctx.Err() != nil {
			msg := fmt.Sprintf("the device had accepted the update and was rebooting into it; nothing was committed: check what booted with 'otactl bootstate', and run 'otactl commit' to keep the new firmware (uncommitted, it falls back to slot %d)", before.Boot.ActiveSlot)
			if o.CommitTimeout.otaValue() == ota.AutoCommit {
				msg = "the device had accepted the update and was rebooting into it; with --commit-timeout 0 the new firmware commits itself at boot: check what booted with 'otactl bootstate'"
			}
			return &InterruptedError{Err: err, Msg: msg}
		}
		return deviceErr(fmt.Errorf("the device did not come back after the update: %w", err), f.rebootTimeout())
	}
	res.Result = string(out.Result)
	res.Reason = out.Reason
	res.After = &out.After
	res.Version = out.Info.FWVersion
	res.BuildID = out.Info.FWID
	res.Info = rawJSON(out.Info.Raw)
	res.Committed = out.After.IsCommitted
	p := f.outPalette()

	if !out.Result.Took() {
		if f.G.JSON {
			if err := writeJSON(f.IO.Out, res); err != nil {
				return err
			}
		} else {
			// Reason says which firmware runs, on which slot, and why.
			f.out("%s %s", p.red(failedLabel(out.Result)), out.Reason)
		}
		return &ExitError{Code: ExitUpdate, Err: out.Err(), Silent: !f.G.JSON}
	}

	if out.Result == ota.UpdatedUncommitted && o.Commit {
		if o.HealthMethod != "" {
			f.progressNote("new firmware answers; checking health with %s…", o.HealthMethod)
		}
		cctx, ccancel := context.WithTimeout(ctx, f.G.Timeout)
		bs, err := ota.New(c).CommitAfterHealthCheck(cctx, o.HealthMethod, nil)
		ccancel()
		if errors.Is(err, ota.ErrAlreadyCommitted) && bs.ActiveSlot == out.After.ActiveSlot && bs.IsCommitted {
			err = nil // it committed itself meanwhile: the same slot, committed
		}
		if errors.Is(err, ota.ErrAlreadyCommitted) {
			// Between the outcome and the commit, the device fell back:
			// the commit timeout expired first (or someone reverted).
			// (bs is still the uncommitted state when the device could not
			// be read again after refusing OTA.Commit.)
			res.Result, res.Committed = string(ota.RolledBack), true
			if bs.IsCommitted {
				res.After = &bs
			}
			res.Version, res.BuildID, res.Info = before.Info.FWVersion, before.Info.FWID, nil
			res.Reason = fmt.Sprintf("slot %d ran %s uncommitted, but its commit timeout expired before otactl could commit it: the device falls back to slot %d", out.After.ActiveSlot, out.Info.Firmware(), out.After.RevertSlot)
			if f.G.JSON {
				if err := writeJSON(f.IO.Out, res); err != nil {
					return err
				}
			} else {
				f.out("%s %s", p.red(failedLabel(ota.RolledBack)), res.Reason)
			}
			return &ExitError{Code: ExitUpdate, Err: fmt.Errorf("%w: %s", ota.ErrUpdateFailed, res.Reason), Silent: !f.G.JSON}
		}
		if err != nil {
			if errors.Is(err, ota.ErrHealthCheck) {
				res.Result, res.Reason = "health_check_failed", err.Error()
				if f.G.JSON {
					_ = writeJSON(f.IO.Out, res)
				}
				// err already says that nothing was committed and what
				// happens next.
				return &ExitError{Code: ExitUpdate, Err: err}
			}
			if ctx.Err() != nil {
				return &InterruptedError{Err: err, Msg: "the new firmware runs, but otactl may not have committed it: check with 'otactl bootstate', and run 'otactl commit' if it is not committed"}
			}
			return deviceErr(err, f.G.Timeout)
		}
		res.Result, res.Committed, res.After = string(ota.UpdatedCommitted), true, &bs
		res.Reason = fmt.Sprintf("slot %d runs %s, committed", bs.ActiveSlot, out.Info.Firmware())
		if o.HealthMethod != "" {
			res.Reason += " after " + o.HealthMethod + " answered"
		}
	}
	if !res.Committed && !out.CommitDeadline.IsZero() {
		d := out.CommitDeadline
		res.CommitDeadline = &d
		left := time.Until(d).Seconds()
		res.CommitIn = &left
	}
	if f.G.JSON {
		return writeJSON(f.IO.Out, res)
	}
	name := strings.TrimSpace(out.Info.App + " " + out.Info.FWVersion)
	if res.Committed {
		f.out("%s slot %d runs %s, committed (was %s on slot %d).", p.green("updated:"), res.After.ActiveSlot, name, before.Info.FWVersion, before.Boot.ActiveSlot)
		return nil
	}
	left := ""
	if res.CommitDeadline != nil {
		left = " in " + humanDuration(time.Until(*res.CommitDeadline))
	}
	f.out("%s slot %d runs %s, %s. The device falls back to slot %d (%s)%s unless you run `otactl commit`.",
		p.green("updated:"), out.After.ActiveSlot, name, p.yellow("not yet committed"), out.After.RevertSlot, before.Info.FWVersion, left)
	return nil
}

// failedLabel heads the line of an update that did not take: only a
// device that came back on its old firmware rolled back; one that never
// switched (the update failed, or it did not reboot) did not apply it.
func failedLabel(r ota.Result) string {
	if r == ota.RolledBack {
		return "ROLLED BACK:"
	}
	return "NOT APPLIED:"
}

// verdictMargin extends the wait for an outcome past the reboot timeout, so
// that a device that answers all along on its old firmware is seen once
// more when that timeout passes and reported as NOT APPLIED (exit 6), not
// as unreachable (exit 5).
const verdictMargin = 5 * time.Second

// progressNote prints a step on stderr in human mode; in --json mode only
// with --verbose.
func (f *Factory) progressNote(format string, args ...any) {
	if f.G.JSON && !f.G.Verbose {
		return
	}
	f.note(format, args...)
}

// rebootTimeout bounds the wait for a device to come back after a reboot:
// --timeout when given, else at least two minutes (boards take a while to
// rejoin a network).
func (f *Factory) rebootTimeout() time.Duration {
	if f.timeoutSet || f.G.Timeout >= 2*time.Minute {
		return f.G.Timeout
	}
	return 2 * time.Minute
}

// oneShotServer serves one bundle file at an unguessable path.
type oneShotServer struct {
	URL       string
	srv       *http.Server
	ln        net.Listener
	downloads atomic.Int32
}

func (s *oneShotServer) Close() error { return s.srv.Close() }

// serveOnce serves file on addr (HOST[:PORT]; empty: this machine's
// address on the route to the device named by port). progress, if set,
// gets the bytes sent of each download as they go out.
func serveOnce(file, addr, port string, progress func(sent, total int64)) (*oneShotServer, error) {
	host, p := addr, "0"
	if addr != "" {
		if h, pp, err := net.SplitHostPort(addr); err == nil {
			host, p = h, pp
		}
	} else {
		var err error
		host, err = routeAddr(port)
		if err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, p))
	if err != nil {
		return nil, usageErrorf("--serve-addr %s: %v", net.JoinHostPort(host, p), err)
	}
	tok := make([]byte, 8)
	_, _ = rand.Read(tok)
	path := "/" + hex.EncodeToString(tok) + "/fw.zip"
	s := &oneShotServer{ln: ln, URL: "http://" + ln.Addr().String() + path}
	mux := http.NewServeMux()
	mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
		s.downloads.Add(1)
		w.Header().Set("Content-Type", "application/zip")
		if progress != nil {
			if st, err := os.Stat(file); err == nil {
				w = &countingResponse{ResponseWriter: w, total: st.Size(), progress: progress}
			}
		}
		http.ServeFile(w, r, file)
	})
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

// routeAddr finds this machine's address on the route to the device (or
// its MQTT broker). No packet is sent.
func routeAddr(port string) (string, error) {
	u, err := transport.ParsePort(port)
	if err != nil {
		return "", err
	}
	if u.Scheme == "serial" {
		return "", usageErrorf("--file over a serial port needs --serve-addr HOST:PORT that the device can reach on its network; or send the bundle over the serial link with 'otactl push'")
	}
	host := u.Hostname()
	if host == "" {
		return "", usageErrorf("cannot tell which address the device reaches this machine at: pass --serve-addr HOST:PORT")
	}
	c, err := net.Dial("udp", net.JoinHostPort(host, "9"))
	if err != nil {
		return "", usageErrorf("cannot find a route to %s: pass --serve-addr HOST:PORT (%v)", host, err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).IP.String(), nil
}

// countingResponse reports the body bytes written to the device.
type countingResponse struct {
	http.ResponseWriter
	sent, total int64
	progress    func(sent, total int64)
}

func (c *countingResponse) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.sent += int64(n)
	c.progress(c.sent, c.total)
	return n, err
}
