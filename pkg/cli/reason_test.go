package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/otactl/otactl/pkg/ota"
	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/transport"
)

// Every reason code goes with the exit code docs/exit-codes.md gives it:
// whatever the error, the code in the JSON document and the exit status
// agree.
func TestReasonAndExitCodeAgree(t *testing.T) {
	devErr := func(msg string) error { return &rpc.Error{Method: "OTA.Update", Code: -1, Message: msg} }
	for _, tc := range []struct {
		err  error
		want ota.Reason
	}{
		{usageErrorf("bad flag"), ota.ReasonUsage},
		{fmt.Errorf("x: %w", ota.ErrTimeoutRange), ota.ReasonUsage},
		{&InterruptedError{Err: context.Canceled}, ota.ReasonInterrupted},
		{&rpc.Error{Method: "OTA.Commit", Code: -1}, ota.ReasonDeviceError},
		{fmt.Errorf("%w: x: %w", ota.ErrAlreadyCommitted, &rpc.Error{Code: -1}), ota.ReasonDeviceError},
		{&ExitError{Code: ExitUpdate, Err: fmt.Errorf("%w: %w", ota.ErrUpdateFailed, devErr("Wrong platform"))}, ota.ReasonWrongPlatform},
		{&ExitError{Code: ExitUpdate, Err: fmt.Errorf("%w: %w", ota.ErrUpdateFailed, devErr("-1 Digest mismatch"))}, ota.ReasonCorruptBundle},
		{&ExitError{Code: ExitUpdate, Err: fmt.Errorf("%w: %w", ota.ErrUpdateFailed, devErr("Invalid HTTP response code 404"))}, ota.ReasonDownloadFailed},
		{&ExitError{Code: ExitUpdate, Err: fmt.Errorf("%w: %w", ota.ErrUpdateFailed, devErr("Update timed out"))}, ota.ReasonUpdateTimeout},
		{&ExitError{Code: ExitUpdate, Err: fmt.Errorf("%w: %w", ota.ErrUpdateFailed, devErr("something new"))}, ota.ReasonRejected},
		{&ExitError{Code: ExitUpdate, Err: fmt.Errorf("%w: %w: x", ota.ErrUpdateFailed, ota.ErrBusy)}, ota.ReasonBusy},
		{&ExitError{Code: ExitUpdate, Err: fmt.Errorf("%w: %w: %w", ota.ErrUpdateFailed, ota.ErrUncommitted, devErr("Failed to init updater"))}, ota.ReasonUncommitted},
		{&ExitError{Code: ExitUpdate, Err: ota.WithReason(ota.ReasonCorruptBundle, errors.New("bad zip"))}, ota.ReasonCorruptBundle},
		{(&ota.Outcome{Result: ota.RolledBack, Reason: ota.ReasonRolledBack, Message: "m"}).Err(), ota.ReasonRolledBack},
		{(&ota.Outcome{Result: ota.NotApplied, Reason: ota.ReasonDeviceReset, Message: "m"}).Err(), ota.ReasonDeviceReset},
		{(&ota.Outcome{Result: ota.NotApplied, Reason: ota.ReasonNoReboot, Message: "m"}).Err(), ota.ReasonNoReboot},
		{&ota.HealthError{Method: "App.Health", Last: errors.New("x")}, ota.ReasonHealthFailed},
		{&ota.PushError{Rejected: true, Err: devErr("Invalid CRC")}, ota.ReasonCorruptBundle},
		{&UnreachableError{Err: &ota.GaveUpError{Err: context.DeadlineExceeded}}, ota.ReasonTimeout},
		{&UnreachableError{Err: errors.New("connection refused")}, ota.ReasonUnreachable},
		{deviceErr(context.DeadlineExceeded, nil), ota.ReasonTimeout},
		{&rpc.LinkError{Method: "Sys.GetInfo", Err: io.EOF}, ota.ReasonUnreachable},
		{fmt.Errorf("x: %w", rpc.ErrAuth), ota.ReasonAuth},
		{&transport.AuthError{Kind: transport.AuthRequired, Method: "Sys.GetInfo"}, ota.ReasonAuthRequired},
		{&transport.AuthError{Kind: transport.AuthRefused, User: "admin"}, ota.ReasonAuthRefused},
		{fmt.Errorf("%w: x", &transport.AuthError{Kind: transport.AuthForbidden, Method: "OTA.Update", User: "viewer"}), ota.ReasonForbidden},
		{&transport.AuthError{Kind: transport.AuthMalformed}, ota.ReasonAuthMalformed},
		{&transport.TLSError{Peer: "device", Err: errors.New("x509")}, ota.ReasonTLS},
		{&ExitError{Code: ExitUpdate, Err: &reasonError{reason: ReasonBadSignature, err: errors.New("sig")}}, ota.ReasonBadSignature},
		{&ota.ReplyError{Method: "OTA.GetBootState", Missing: []string{"active_slot"}}, ota.ReasonBadReply},
		{fmt.Errorf("odd: %w", ota.ErrNotRPC), ota.ReasonNotRPC},
		{&rpc.LinkError{Method: "Sys.GetInfo", Err: fmt.Errorf("html: %w", transport.ErrNotRPC)}, ota.ReasonNotRPC},
		{&ota.PushError{Err: fmt.Errorf("html: %w", transport.ErrNotRPC)}, ota.ReasonNotRPC},
		{fmt.Errorf("x: %w", rpc.ErrDuplicateReply), ota.ReasonDuplicateDevice},
		{&ota.PushError{Err: io.EOF}, ota.ReasonFailed},
		{&ota.PushError{Err: &rpc.LinkError{Method: "OTA.Write", Err: io.EOF}}, ota.ReasonUnreachable},
		{errors.New("disk full"), ota.ReasonFailed},
	} {
		got := reasonFor(tc.err)
		if got != tc.want {
			t.Errorf("%v: reason %q, want %q", tc.err, got, tc.want)
		}
		if code, ok := got.ExitCode(), got.Known(); !ok || code != ExitCode(tc.err) {
			t.Errorf("%v: reason %q has exit %d (listed: %v), the command exits %d", tc.err, got, code, ok, ExitCode(tc.err))
		}
	}
}

// Every failure of update and push prints exactly one JSON document with
// result and reason, even when it stops before anything is sent.
func TestUpdateFailureDocuments(t *testing.T) {
	bundle := writeTestBundle(t, t.TempDir())
	for _, tc := range []struct {
		args           []string
		result, reason string
		code           int
	}{
		{[]string{"update", "--url", "http://h/fw.zip", "--commit-timeout", "99999999999"}, "not_applied", "usage", ExitUsage},
		{[]string{"update", "--bogus"}, "not_applied", "usage", ExitUsage},
		{[]string{"push", "no-such.zip"}, "not_applied", "usage", ExitUsage},
		{[]string{"update", "--url", "http://h/fw.zip"}, "not_applied", "unreachable", ExitUnreachable},
		{[]string{"push", bundle}, "not_applied", "unreachable", ExitUnreachable},
	} {
		args := append([]string{"--json", "--port", "http://127.0.0.1:1/rpc"}, tc.args...)
		r := run(t, nil, args...)
		doc := jsonDoc(t, r.stdout)
		if r.code != tc.code || doc["result"] != tc.result || doc["reason"] != tc.reason || doc["exit_code"] != float64(tc.code) ||
			doc["message"] == nil || doc["message"] == "" || doc["error"] == nil {
			t.Errorf("%v: exit %d, document %s", tc.args, r.code, r.stdout)
		}
	}
	// Other commands' error documents carry the reason too.
	r := run(t, nil, "--json", "--port", "http://127.0.0.1:1/rpc", "bootstate")
	if doc := jsonDoc(t, r.stdout); doc["reason"] != "unreachable" || doc["exit_code"] != float64(ExitUnreachable) {
		t.Errorf("bootstate: %s", r.stdout)
	}
}

// resultFor: not_applied when nothing was installed, unknown when otactl
// cannot tell.
func TestResultFor(t *testing.T) {
	for _, tc := range []struct {
		err  error
		sent bool
		want string
	}{
		{errors.New("link"), false, "not_applied"},
		{errors.New("link"), true, "unknown"},
		{&ota.PushError{Err: io.EOF}, true, "not_applied"},
		{(&ota.Outcome{Result: ota.RolledBack, Reason: ota.ReasonRolledBack}).Err(), true, "rolled_back"},
		{&ota.HealthError{Last: io.EOF}, true, "health_check_failed"},
		{&InterruptedError{Err: context.Canceled}, true, "unknown"},
	} {
		if got := resultFor(tc.err, reasonFor(tc.err), tc.sent); got != tc.want {
			t.Errorf("%v (sent %v): %q, want %q", tc.err, tc.sent, got, tc.want)
		}
	}
}
