package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
)

func TestCallPrintsIndentedJSON(t *testing.T) {
	port := startDevice(t)
	r := run(t, nil, "--port", port, "call", "Sys.GetInfo", `{"x": 1}`)
	if r.code != 0 {
		t.Fatalf("exit %d, stderr %s", r.code, r.stderr)
	}
	want := "{\n  \"args\": {\n    \"x\": 1\n  },\n  \"fw_version\": \"1.0\",\n  \"id\": \"dev1\"\n}\n"
	if r.stdout != want {
		t.Fatalf("stdout:\n%s\nwant:\n%s", r.stdout, want)
	}
	if r.stderr != "" {
		t.Fatalf("unexpected stderr %q", r.stderr)
	}
}

func TestCallPortFromEnvironment(t *testing.T) {
	port := startDevice(t)
	for _, env := range []map[string]string{
		{"OTACTL_PORT": port},
		{"MOS_PORT": port},
		{"OTACTL_PORT": port, "MOS_PORT": "http://127.0.0.1:1/rpc"},
	} {
		r := run(t, env, "call", "Sys.GetInfo")
		if r.code != 0 || !json.Valid([]byte(r.stdout)) {
			t.Fatalf("env %v: exit %d stdout %q stderr %q", env, r.code, r.stdout, r.stderr)
		}
	}
	// The flag wins over the environment.
	r := run(t, map[string]string{"OTACTL_PORT": "http://127.0.0.1:1/rpc"}, "--port", port, "call", "Sys.GetInfo")
	if r.code != 0 {
		t.Fatalf("flag did not override env: exit %d %s", r.code, r.stderr)
	}
}

func TestCallExitCodes(t *testing.T) {
	port := startDevice(t)
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"unknown method", []string{"--port", port, "call", "No.Such"}, ExitRPCError, "device returned error 404: No handler for No.Such"},
		{"error reply", []string{"--port", port, "call", "OTA.Commit"}, ExitRPCError, "OTA.Commit: device returned error -1"},
		{"unreachable", []string{"--port", "http://127.0.0.1:1/rpc", "call", "Sys.GetInfo"}, ExitUnreachable, "connection refused"},
		{"no serial port", []string{"--port", "/dev/ttyNOPE9", "call", "Sys.GetInfo"}, ExitUnreachable, "/dev/ttyNOPE9"},
		{"timeout", []string{"--port", port, "--timeout", "200ms", "call", "Slow"}, ExitUnreachable, "raise --timeout"},
		{"bad flag", []string{"--port", port, "call", "--bogus", "Sys.GetInfo"}, ExitUsage, "unknown flag: --bogus"},
		{"no method", []string{"--port", port, "call"}, ExitUsage, "call takes METHOD"},
		{"bad json", []string{"--port", port, "call", "X", "{nope"}, ExitUsage, "not valid JSON"},
		{"no port", []string{"call", "Sys.GetInfo"}, ExitUsage, "no port given"},
		{"bad scheme", []string{"--port", "ftp://u:pw123@h/rpc", "call", "X"}, ExitUsage, "known schemes"},
		{"unknown command", []string{"frobnicate"}, ExitUsage, "unknown command"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, nil, tc.args...)
			if r.code != tc.code {
				t.Fatalf("exit %d, want %d; stderr %q", r.code, tc.code, r.stderr)
			}
			if !strings.Contains(r.stderr, tc.stderr) {
				t.Fatalf("stderr %q does not contain %q", r.stderr, tc.stderr)
			}
			if r.stdout != "" {
				t.Fatalf("stdout not empty on failure: %q", r.stdout)
			}
			if strings.Contains(r.stderr, "pw123") {
				t.Fatalf("password printed: %q", r.stderr)
			}
		})
	}
}

func TestCallFlagParsing(t *testing.T) {
	f := &Factory{IO: &IOStreams{Out: &bytes.Buffer{}, ErrOut: &bytes.Buffer{}}}
	var got *CallOptions
	cmd := NewCmdCall(f, func(ctx context.Context, o *CallOptions) error { got = o; return nil })
	cmd.SetArgs([]string{"OTA.Update", `{"url":"http://x/fw.zip","commit_timeout":"300"}`})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if got.Method != "OTA.Update" || !strings.Contains(string(got.Args), `"300"`) {
		t.Fatalf("parsed %+v", got)
	}
}

func TestDefaultTimeoutIs20s(t *testing.T) {
	f := &Factory{IO: &IOStreams{Out: &bytes.Buffer{}, ErrOut: &bytes.Buffer{}}}
	root := NewRootCmd(f)
	fl := root.PersistentFlags().Lookup("timeout")
	if fl == nil || fl.DefValue != "20s" {
		t.Fatalf("--timeout default %v", fl)
	}
}
