package httptransport

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/transporttest"
)

// Every answer that is not an RPC reply to the request is reported as
// such (ErrNotRPC), with what came back, an excerpt and no secret; nothing
// is queued for Recv. A real loopback server gives each kind of answer.
func TestAnswersThatAreNotRPCFrames(t *testing.T) {
	transporttest.LeakCheck(t)
	const reqID = 7
	page := `<html><body><h1>500 Internal Server Error</h1><a href="http://admin:hunter2@10.0.0.1/">retry</a></body></html>`
	for _, tc := range []struct {
		name   string
		status int
		body   string
		want   []string
	}{
		{"500 page", 500, page, []string{"not an RPC frame: HTTP 500 Internal Server Error", `"<html><body><h1>500 Internal Server Error</h1><a href=\"http://xxxxx@10.0.0.1/\">r"… (110 bytes)`, "check the device log"}},
		{"502 empty", 502, "", []string{"HTTP 502 Bad Gateway with an empty body"}},
		{"404", 404, "Not Found\n", []string{"HTTP 404 Not Found \"Not Found\"", "no RPC endpoint at this path"}},
		{"302", 302, "", []string{"HTTP 302 Found"}},
		{"html", 200, "<!DOCTYPE html><title>router login</title>", []string{`an HTTP 200 reply "<!DOCTYPE html><title>router login</title>" (not JSON)`}},
		{"garbage", 200, "\x00\x01garbage\xff", []string{`"\x00\x01garbage\xff" (not JSON)`}},
		{"NaN", 200, "NaN", []string{`"NaN" (not JSON)`}},
		{"number", 200, "42", []string{`"42" (a JSON number, not an object)`}},
		{"string", 200, `"ok"`, []string{`(a JSON string, not an object)`}},
		{"array", 200, `[{"id":7,"result":1}]`, []string{`(a JSON array, not an object)`}},
		{"null", 200, `null`, []string{`(JSON null, not an object)`}},
		{"broken object", 200, `{"id":7,"result":`, []string{`(invalid JSON)`}},
		{"no id", 200, `{"status":"ok"}`, []string{`(a JSON object without an id: no reply)`}},
		{"empty object", 200, `{}`, []string{`(a JSON object without an id: no reply)`}},
		{"other id", 200, `{"id":8,"result":1}`, []string{`(a frame with id 8, but the request had id 7)`}},
		{"bad id", 200, `{"id":"seven","result":1}`, []string{`bad frame id`}},
		{"token", 200, `{"token": "abc123secret", "pass":"hunter2"}`, []string{`\"token\": \"xxxxx\", \"pass\":\"xxxxx\"`}},
		{"oversized", 200, `{"id":7,"result":"` + strings.Repeat("A", 70000) + `"}`, []string{`(more than 65536 bytes)`, "larger than 65536 bytes"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := newRawServer(t, func(w http.ResponseWriter, r *http.Request) {
				if tc.status == 302 {
					w.Header().Set("Location", "/login")
				}
				w.WriteHeader(tc.status)
				io.WriteString(w, tc.body)
			})
			c, err := Dial(transporttest.Ctx(t), transporttest.MustParseURL(t, rs.URL+"/rpc"), transport.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			err = c.Send(transporttest.Ctx(t), &frame.Frame{ID: reqID, Method: "Sys.GetInfo"})
			var nr *transport.NotRPCError
			if !errors.Is(err, transport.ErrNotRPC) || !errors.As(err, &nr) {
				t.Fatalf("Send = %v, want ErrNotRPC", err)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "the device answered something that is not an RPC frame: ") {
				t.Errorf("message does not start with the verdict: %s", msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("message misses %q:\n%s", w, msg)
				}
			}
			if strings.Contains(msg, "hunter2") || strings.Contains(msg, "abc123secret") {
				t.Errorf("message leaks a secret: %s", msg)
			}
			if len(msg) > 600 {
				t.Errorf("message is %d bytes long, want a short excerpt: %s", len(msg), msg)
			}
			if !strings.Contains(msg, rs.URL+"/rpc") {
				t.Errorf("message does not name the device: %s", msg)
			}
		})
	}
}

// A reply body without end is not read to its end: the read is bounded.
func TestEndlessReplyIsBounded(t *testing.T) {
	transporttest.LeakCheck(t)
	rs := newRawServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		chunk := []byte(strings.Repeat("x", 4096))
		for {
			if _, err := w.Write(chunk); err != nil {
				return // the client hung up
			}
			select {
			case <-r.Context().Done():
				return
			default:
			}
		}
	})
	c, err := Dial(transporttest.Ctx(t), transporttest.MustParseURL(t, rs.URL+"/rpc"), transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	err = c.Send(transporttest.Ctx(t), &frame.Frame{ID: 1, Method: "Sys.GetInfo"})
	if !errors.Is(err, transport.ErrNotRPC) || !strings.Contains(err.Error(), "larger than 65536 bytes") {
		t.Fatalf("Send = %v, want ErrNotRPC for an oversized reply", err)
	}
	c.Close()
	rs.CloseClientConnections()
}
