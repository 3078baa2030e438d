package rpc_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/pipe"
)

func newPair(t *testing.T, s *rpc.Server, opts rpc.ClientOptions) *rpc.Client {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	c := rpc.NewClient(pipe.New(s), opts)
	t.Cleanup(func() { c.Close() })
	return c
}

func testServer() *rpc.Server {
	s := rpc.NewServer("dev1")
	s.Handle("Echo", func(ctx context.Context, r *rpc.Request) (any, error) { return r.Params, nil })
	s.Handle("Null", func(ctx context.Context, r *rpc.Request) (any, error) { return nil, nil })
	s.Handle("Fail", func(ctx context.Context, r *rpc.Request) (any, error) {
		return nil, rpc.Errorf(-1, "Previous update has not been committed yet")
	})
	s.Handle("FailNoMsg", func(ctx context.Context, r *rpc.Request) (any, error) { return nil, &rpc.Error{Code: -1} })
	s.Handle("Legacy", func(ctx context.Context, r *rpc.Request) (any, error) {
		return nil, &rpc.Error{Code: 0, Message: "Update applied, finalizing"}
	})
	s.Handle("Plain", func(ctx context.Context, r *rpc.Request) (any, error) { return nil, errors.New("disk on fire") })
	s.Handle("Block", func(ctx context.Context, r *rpc.Request) (any, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	return s
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestCallResults(t *testing.T) {
	c := newPair(t, testServer(), rpc.ClientOptions{})
	res, err := c.Call(ctx(t), "Echo", map[string]int{"a": 1})
	if err != nil || string(res) != `{"a":1}` {
		t.Fatalf("Echo = %s, %v", res, err)
	}
	res, err = c.Call(ctx(t), "Null", nil)
	if err != nil || string(res) != "null" {
		t.Fatalf("Null = %s, %v", res, err)
	}
	// Code 0 is success even with a message (old OTA.Update).
	if _, err := c.Call(ctx(t), "Legacy", nil); err != nil {
		t.Fatalf("code-0 error treated as failure: %v", err)
	}
	var out struct{ A int }
	if err := c.CallInto(ctx(t), "Echo", json.RawMessage(`{"a":7}`), &out); err != nil || out.A != 7 {
		t.Fatalf("CallInto = %+v, %v", out, err)
	}
}

func TestRemoteErrors(t *testing.T) {
	c := newPair(t, testServer(), rpc.ClientOptions{})
	for _, tc := range []struct {
		method string
		code   int
		msg    string
	}{
		{"Fail", -1, "Previous update has not been committed yet"},
		{"FailNoMsg", -1, ""},
		{"Plain", -1, "disk on fire"},
		{"OTA.Nope", 404, "No handler for OTA.Nope"},
	} {
		_, err := c.Call(ctx(t), tc.method, nil)
		var re *rpc.Error
		if !errors.As(err, &re) {
			t.Fatalf("%s: error %v is not an *rpc.Error", tc.method, err)
		}
		if re.Code != tc.code || re.Message != tc.msg || re.Method != tc.method {
			t.Errorf("%s: got %+v", tc.method, re)
		}
		if !strings.Contains(err.Error(), tc.method) {
			t.Errorf("error text %q does not name the method", err)
		}
	}
	if _, err := c.Call(ctx(t), "OTA.Nope", nil); !rpc.IsNotFound(err) {
		t.Errorf("IsNotFound(%v) = false", err)
	}
}

func TestDeadlineAndCancel(t *testing.T) {
	c := newPair(t, testServer(), rpc.ClientOptions{})
	dctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.Call(dctx, "Block", nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("deadline: got %v", err)
	}
	cctx, cancel2 := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := c.Call(cctx, "Block", nil); done <- err }()
	cancel2()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancel: got %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cancel did not end the call")
	}
	// Still usable.
	if _, err := c.Call(ctx(t), "Null", nil); err != nil {
		t.Fatal(err)
	}
}

func TestCloseFailsPendingCalls(t *testing.T) {
	s := testServer()
	entered := make(chan struct{})
	s.Handle("Block", func(ctx context.Context, r *rpc.Request) (any, error) {
		close(entered)
		<-ctx.Done()
		return nil, ctx.Err()
	})
	c := newPair(t, s, rpc.ClientOptions{})
	done := make(chan error, 1)
	go func() { _, err := c.Call(context.Background(), "Block", nil); done <- err }()
	<-entered // the call is pending
	c.Close()
	select {
	case err := <-done:
		if err == nil || !errors.Is(err, transport.ErrClosed) {
			t.Fatalf("pending call after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end the pending call")
	}
	if _, err := c.Call(ctx(t), "Null", nil); err == nil {
		t.Fatal("call after Close succeeded")
	}
}

func TestConcurrentCallsMatchedByID(t *testing.T) {
	c := newPair(t, testServer(), rpc.ClientOptions{})
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			var out struct{ N int }
			if err := c.CallInto(ctx(t), "Echo", map[string]int{"n": i}, &out); err != nil || out.N != i {
				errs <- fmt.Errorf("call %d got %d, %v", i, out.N, err)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestIDRange(t *testing.T) {
	for i := 0; i < 10000; i++ {
		id := rpc.NewID()
		if id < 1<<40 || id >= 1<<41 {
			t.Fatalf("id %d outside [2^40, 2^41)", id)
		}
	}
}

func TestServerFrameRules(t *testing.T) {
	s := testServer()
	ran := make(chan struct{}, 1)
	s.Handle("Note", func(ctx context.Context, r *rpc.Request) (any, error) { ran <- struct{}{}; return 1, nil })
	bg := context.Background()
	// No id: the handler runs, no reply.
	if r := s.HandleFrame(bg, &frame.Frame{Method: "Note"}); r != nil {
		t.Fatalf("reply to a frame without id: %+v", r)
	}
	select {
	case <-ran:
	default:
		t.Fatal("handler did not run for a frame without id")
	}
	// Another device's dst: dropped.
	if r := s.HandleFrame(bg, &frame.Frame{ID: 1, Dst: "other", Method: "Echo"}); r != nil {
		t.Fatalf("answered a frame for another device: %+v", r)
	}
	// Our dst, src/dst/tag swapped back.
	r := s.HandleFrame(bg, &frame.Frame{ID: 9, Src: "mos", Dst: "dev1", Tag: "t1", Method: "Null"})
	if r == nil || r.ID != 9 || r.Src != "dev1" || r.Dst != "mos" || r.Tag != "t1" || string(r.Result) != "null" {
		t.Fatalf("reply %+v", r)
	}
	// Responses are not requests.
	if r := s.HandleFrame(bg, &frame.Frame{ID: 3, Result: json.RawMessage("1")}); r != nil {
		t.Fatal("answered a response frame")
	}
	// Legacy "args" are accepted.
	r = s.HandleFrame(bg, &frame.Frame{ID: 4, Method: "Echo", Args: json.RawMessage(`{"x":2}`)})
	if string(r.Result) != `{"x":2}` {
		t.Fatalf("args not passed: %s", r.Result)
	}
	// Output is ASCII-only once marshalled.
	s.Handle("Uni", func(ctx context.Context, r *rpc.Request) (any, error) { return "héllo ✓", nil })
	b, _ := frame.Marshal(s.HandleFrame(bg, &frame.Frame{ID: 5, Method: "Uni"}))
	for _, ch := range b {
		if ch >= 0x80 {
			t.Fatalf("non-ASCII reply %q", b)
		}
	}
	if got := s.Methods(); len(got) == 0 || got[0] != "Block" {
		t.Fatalf("Methods() = %v", got)
	}
}

func TestLenientArguments(t *testing.T) {
	req := func(params string) *rpc.Request {
		return &rpc.Request{Params: json.RawMessage(params)}
	}
	for _, tc := range []struct {
		params string
		want   int64
		ok     bool
		bad    bool
	}{
		{`{"t":300}`, 300, true, false},
		{`{"t":"300"}`, 300, true, false},
		{`{"t":"0x12c"}`, 300, true, false},
		{`{"t":"0X12C"}`, 300, true, false},
		{`{"t":"0454"}`, 300, true, false}, // strtol base 0: octal
		{`{"t":" 300"}`, 300, true, false}, // leading space skipped
		{`{"t":"+300"}`, 300, true, false},
		{`{"t":-5}`, -5, true, false},
		{`{"t":"-5"}`, -5, true, false},
		{`{"t":0}`, 0, true, false},
		{`{"t":"99999999999"}`, 2147483647, true, false}, // 32-bit long saturates
		{`{"t":"300 "}`, 0, true, true},                  // trailing text not consumed
		{`{"t":3e2}`, 0, true, true},
		{`{"t":300.0}`, 0, true, true},
		{`{"t":"09"}`, 0, true, true}, // 9 is not octal
		{`{"t":"0x"}`, 0, true, true},
		{`{"t":1.5}`, 0, true, true},
		{`{"t":"abc"}`, 0, true, true},
		{`{"t":""}`, 0, true, true},
		{`{"t":true}`, 0, true, true},
		{`{"t":"00000000000000000000000000000300"}`, 0, true, true}, // 32 chars: too long for the scanner
		{`{"t":null}`, 0, false, false},
		{`{}`, 0, false, false},
		{`[1]`, 0, false, false},
	} {
		v, ok, err := req(tc.params).Int("t")
		if v != tc.want || ok != tc.ok || (err != nil) != tc.bad {
			t.Errorf("Int(%s) = %d, %v, %v", tc.params, v, ok, err)
		}
	}
	for params, want := range map[string]bool{
		`{"b":true}`: true, `{"b":"true"}`: false, `{"b":1}`: false, `{"b":false}`: false, `{}`: false,
	} {
		if got := req(params).Bool("b"); got != want {
			t.Errorf("Bool(%s) = %v", params, got)
		}
	}
	if s, ok := req(`{"url":"http://x/fw.zip"}`).String("url"); !ok || s != "http://x/fw.zip" {
		t.Errorf("String = %q %v", s, ok)
	}
	if _, ok := req(`{"url":5}`).String("url"); ok {
		t.Error("String accepted a number")
	}
}

// A device that wants in-frame digest auth (docs/protocol.md, "Authentication").
func authServer(user, pass string) *rpc.Server {
	s := testServer()
	const realm, nonce = "otactl-test", 123456
	s.SetGate(func(ctx context.Context, r *rpc.Request) *frame.Error {
		a := r.Frame.Auth
		alg := "SHA-256"
		if a != nil && a.Username == user && a.Realm == realm && a.Nonce == nonce &&
			a.Response == rpc.DigestResponse(alg, user, realm, pass, a.Nonce, a.CNonce) {
			return nil
		}
		msg := fmt.Sprintf(`{"auth_type":"digest","nonce":%d,"nc":1,"realm":%q,"algorithm":%q}`, nonce, realm, alg)
		return &frame.Error{Code: 401, Message: msg}
	})
	return s
}

func TestDigestAuth(t *testing.T) {
	s := authServer("admin", "s3cret")
	good := newPair(t, s, rpc.ClientOptions{Creds: &transport.Credentials{User: "admin", Password: "s3cret"}})
	if res, err := good.Call(ctx(t), "Echo", map[string]int{"a": 1}); err != nil || string(res) != `{"a":1}` {
		t.Fatalf("with good creds: %s, %v", res, err)
	}
	bad := newPair(t, s, rpc.ClientOptions{Creds: &transport.Credentials{User: "admin", Password: "wr0ng-H1dden"}})
	_, err := bad.Call(ctx(t), "Echo", nil)
	if !errors.Is(err, rpc.ErrAuth) || strings.Contains(err.Error(), "wr0ng-H1dden") || !strings.Contains(err.Error(), `refused user "admin"`) {
		t.Fatalf("with bad creds: %v", err)
	}
	none := newPair(t, s, rpc.ClientOptions{})
	_, err = none.Call(ctx(t), "Echo", nil)
	if !errors.Is(err, rpc.ErrAuth) || !strings.Contains(err.Error(), "--rpc-creds") {
		t.Fatalf("without creds: %v", err)
	}
}

func TestDigestResponseVector(t *testing.T) {
	// Computed independently: md5(md5("u:r:p") + ":5:1:7:auth:" + md5("dummy_method:dummy_uri")).
	if got := rpc.DigestResponse("MD5", "u", "r", "p", 5, 7); got != "b183ed80ca55209daa6b8c9811f2749c" {
		t.Fatalf("MD5 response %q", got)
	}
	if rpc.DigestResponse("SHA-256", "u", "r", "p", 5, 7) == rpc.DigestResponse("SHA-256", "u", "r", "p", 5, 8) {
		t.Fatal("cnonce ignored")
	}
}

// Arguments that are not JSON are the caller's mistake, found before anything
// is sent: not a link failure.
func TestCallRejectsInvalidRawArguments(t *testing.T) {
	c := newPair(t, testServer(), rpc.ClientOptions{})
	_, err := c.Call(ctx(t), "Echo", json.RawMessage(`{"a":`))
	var le *rpc.LinkError
	if err == nil || errors.As(err, &le) {
		t.Fatalf("Call with invalid JSON arguments = %v, want an argument error that is not a *LinkError", err)
	}
	if !strings.Contains(err.Error(), "not valid JSON") {
		t.Fatalf("error does not say what is wrong: %v", err)
	}
}
