package cli

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gorilla/websocket"

	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/ws"
)

// garbageHTTP is a loopback server that answers every request with status
// and body.
func garbageHTTP(t *testing.T, status int, body string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/rpc"
}

// garbageWS is a loopback WebSocket server that answers every message with
// body.
func garbageWS(t *testing.T, body string) string {
	t.Helper()
	up := websocket.Upgrader{Subprotocols: []string{ws.Subprotocol}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				return
			}
			if err := c.WriteMessage(websocket.TextMessage, []byte(body)); err != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	return "ws" + strings.TrimPrefix(srv.URL, "http") + "/rpc"
}

// An answer that is not an RPC frame is exit 1 with the verdict "the device
// answered something that is not an RPC frame" and an excerpt, on every
// command and transport (before: exit 5 "unreachable", and over WebSocket
// "no answer within …").
func TestAnswersThatAreNotRPCFramesExit1(t *testing.T) {
	big := `{"id":1,"result":"` + strings.Repeat("A", 100000) + `"}`
	for _, tc := range []struct {
		name, port, excerpt string
	}{
		{"HTTP 500", garbageHTTP(t, 500, "<html><h1>Internal Server Error</h1></html>"), `HTTP 500 Internal Server Error "<html><h1>Internal Server Error</h1></html>"`},
		{"HTTP 200 HTML", garbageHTTP(t, 200, "<!DOCTYPE html><p>login"), `"<!DOCTYPE html><p>login" (not JSON)`},
		{"HTTP 200 NaN", garbageHTTP(t, 200, "NaN"), `"NaN" (not JSON)`},
		{"HTTP 200 garbage", garbageHTTP(t, 200, "\x00\x17\xfe"), `"\x00\x17\xfe" (not JSON)`},
		{"HTTP 200 oversized", garbageHTTP(t, 200, big), "larger than 65536 bytes"},
		{"WS NaN", garbageWS(t, "NaN"), `a WebSocket text message "NaN" (not JSON)`},
		{"WS HTML", garbageWS(t, "<html>hi</html>"), `"<html>hi</html>" (not JSON)`},
		{"WS oversized", garbageWS(t, big), "larger than 65536 bytes"},
		{"WS handshake answered by a web page", "ws" + strings.TrimPrefix(garbageHTTP(t, 200, "<html>router</html>"), "http"), `HTTP 200 OK instead of a WebSocket upgrade "<html>router</html>"`},
	} {
		for _, args := range [][]string{{"call", "Sys.GetInfo"}, {"bootstate"}} {
			t.Run(tc.name+" "+args[0], func(t *testing.T) {
				r := run(t, nil, append([]string{"--port", tc.port, "--timeout", "10s"}, args...)...)
				if r.code != ExitFailure {
					t.Fatalf("exit %d, want %d; stderr %q", r.code, ExitFailure, r.stderr)
				}
				if !strings.Contains(r.stderr, "the device answered something that is not an RPC frame: ") ||
					!strings.Contains(r.stderr, tc.excerpt) {
					t.Fatalf("stderr %q does not give the verdict with %q", r.stderr, tc.excerpt)
				}
				if strings.Contains(r.stderr, "no answer") || r.stdout != "" {
					t.Fatalf("stdout %q stderr %q", r.stdout, r.stderr)
				}
			})
		}
	}
	// The exit code wins over the wrapping of the error.
	for _, err := range []error{
		&rpc.BadReplyError{Method: "X", Err: transport.NewNotRPCError("HTTP 500", "", nil, "")},
		&UnreachableError{Err: transport.NewNotRPCError("HTTP 200 OK instead of a WebSocket upgrade", "", nil, "")},
		fmt.Errorf("prepare: %w", &rpc.DuplicateReplyError{ID: 1}),
		&UnreachableError{Err: &rpc.DuplicateReplyError{ID: 1}},
	} {
		if got := ExitCode(err); got != ExitFailure {
			t.Errorf("ExitCode(%v) = %d, want %d", err, got, ExitFailure)
		}
	}
	r := run(t, nil, "--json", "--port", garbageHTTP(t, 503, "busy"), "bootstate")
	if r.code != ExitFailure || !strings.Contains(r.stdout, `"exit_code": 1`) || !strings.Contains(r.stdout, "not an RPC frame") {
		t.Fatalf("--json: exit %d stdout %q", r.code, r.stdout)
	}
}
