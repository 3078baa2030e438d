package transport

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestExcerpt(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{" \r\n\t", ""},
		{"NaN", `"NaN"`},
		{"  hello\n", `"hello"`},
		{"a\x00\xffb", `"a\x00\xffb"`},
		{strings.Repeat("é", 100), `"` + strings.Repeat("é", ExcerptMax) + `"… (200 bytes)`},
		{"see mqtt://bob:pa55@broker/x now", `"see mqtt://xxxxx@broker/x now"`},
		{"ws://tok3n@dev/rpc", `"ws://xxxxx@dev/rpc"`},
		{"Authorization: Bearer abc.def", `"Authorization: xxxxx"`},
		{"use bearer abc.def", `"use bearer xxxxx"`},
		{`{"password":"p\"w","wifi_psk":"x y","api_key": 12,"name":"n"}`, `"{\"password\":\"xxxxx\",\"wifi_psk\":\"xxxxx\",\"api_key\": xxxxx,\"name\":\"n\"}"`},
		{"?user=a&pass=b&x=1", `"?user=a&pass=xxxxx&x=1"`},
	} {
		if got := Excerpt([]byte(tc.in)); got != tc.want {
			t.Errorf("Excerpt(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
	// A secret that starts inside the excerpt is hidden whole even when
	// the excerpt is cut inside it.
	in := strings.Repeat("x", ExcerptMax-10) + " http://u:" + strings.Repeat("s", 100) + "@h/"
	if got := Excerpt([]byte(in)); strings.Contains(got, "sss") {
		t.Errorf("Excerpt shows part of a password: %s", got)
	}
	if got := ExcerptCut([]byte("abc")); got != `"abc"… (more than 3 bytes)` {
		t.Errorf("ExcerptCut = %s", got)
	}
}

func TestNotRPCError(t *testing.T) {
	e := NewNotRPCError("HTTP 500 Internal Server Error", "", []byte("<h1>oops</h1>"), "http://h/rpc")
	e.Hint = "check the device log"
	var err error = fmt.Errorf("Sys.GetInfo: %w", e)
	if !errors.Is(err, ErrNotRPC) {
		t.Fatal("errors.Is(err, ErrNotRPC) is false")
	}
	want := `the device answered something that is not an RPC frame: HTTP 500 Internal Server Error "<h1>oops</h1>" from http://h/rpc: check the device log`
	if e.Error() != want {
		t.Errorf("Error() = %s\nwant      %s", e.Error(), want)
	}
	e = NewNotRPCError("an HTTP 200 reply", "no frame", []byte{}, "")
	if got := e.Error(); got != "the device answered something that is not an RPC frame: an HTTP 200 reply with an empty body (no frame)" {
		t.Errorf("empty: %s", got)
	}
	e = NewNotRPCError("a WebSocket message", "larger than 10 bytes", nil, "")
	if got := e.Error(); strings.Contains(got, "empty") {
		t.Errorf("nothing to show is not an empty body: %s", got)
	}
}

func TestParseReply(t *testing.T) {
	for _, tc := range []struct{ in, reason string }{
		{`{"id":1,"result":2}`, ""},
		{`{"id":1}`, ""},
		{`{"method":"Sys.Event"}`, ""}, // a request from the device: not ours to judge
		{`{}`, "a JSON object without an id: no reply"},
		{`{"result":1}`, "a JSON object without an id: no reply"},
		{`NaN`, "not JSON"},
		{`nul`, "not JSON"},
		{`true`, "a JSON boolean, not an object"},
		{`-1e3`, "a JSON number, not an object"},
		{`{"id":1`, "invalid JSON"},
		{"", "empty"},
	} {
		f, reason := ParseReply([]byte(tc.in))
		if reason != tc.reason || (reason == "") != (f != nil) {
			t.Errorf("ParseReply(%s) = %v, %q; want reason %q", tc.in, f, reason, tc.reason)
		}
	}
}
