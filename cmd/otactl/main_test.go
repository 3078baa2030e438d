package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/otactl/otactl/pkg/cli"
	"github.com/otactl/otactl/pkg/ota/bundle"
	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/all"
	"github.com/otactl/otactl/pkg/transport/serial"
)

// TestMain lets the test binary act as the otactl command (testscript puts
// it on PATH as "otactl"), so end-to-end tests run the real CLI in its own
// process.
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"otactl": func() { os.Exit(cli.MainWith(os.Args[1:], cli.SystemIO(), os.Getenv, testMainOptions())) },
	})
}

// testMainOptions lets scripts present serial ports of their own to the
// otactl they run (the real enumerator cannot see a pty as a USB port):
// OTACTL_TEST_SERIAL_PORTS holds a JSON array of serial.PortInfo
// ([{"name": "$SERIAL_PORT", "usb": true, "vid": "10C4"}]), or "error" for
// an enumerator that fails. Only this test binary reads it.
func testMainOptions() cli.MainOptions {
	spec, ok := os.LookupEnv("OTACTL_TEST_SERIAL_PORTS")
	if !ok {
		return cli.MainOptions{}
	}
	return cli.MainOptions{ListPorts: func() ([]serial.PortInfo, error) {
		if spec == "error" {
			return nil, errors.New("cannot list serial ports: enumerator failed (test)")
		}
		var ports []serial.PortInfo
		if err := json.Unmarshal([]byte(spec), &ports); err != nil {
			return nil, fmt.Errorf("OTACTL_TEST_SERIAL_PORTS: %w", err)
		}
		return ports, nil
	}}
}

// emulatorProc is an `otactl emulator` process.
type emulatorProc struct {
	cmd  *exec.Cmd
	port string
	log  *bytes.Buffer
}

func startEmulatorProc(t *testing.T, stateDir string, extra ...string) *emulatorProc {
	t.Helper()
	ready := filepath.Join(t.TempDir(), "ready.json")
	var log bytes.Buffer
	cmd := exec.Command("otactl", append([]string{"emulator", "--state-dir", stateDir, "--listen", "127.0.0.1:0",
		"--reboot-delay", "50ms", "--ready-file", ready}, extra...)...)
	cmd.Stdout = &log
	cmd.Stderr = &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &emulatorProc{cmd: cmd, log: &log}
	t.Cleanup(func() { p.kill() })
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, err := os.ReadFile(ready)
		if err == nil {
			var r struct {
				Listeners []struct{ Transport, Addr string }
			}
			if err := json.Unmarshal(b, &r); err != nil {
				t.Fatalf("ready file: %v", err)
			}
			for _, l := range r.Listeners {
				if l.Transport == "http" {
					p.port = l.Addr
				}
			}
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("emulator did not become ready; output:\n%s", log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill is a power cut: SIGKILL, no chance to clean up.
func (p *emulatorProc) kill() {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	_ = p.cmd.Wait()
}

func callDevice(t *testing.T, port, method string, params, out any) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := all.NewRegistry().Dial(ctx, port, transport.Options{})
	if err != nil {
		return err
	}
	c := rpc.NewClient(conn, rpc.ClientOptions{})
	defer c.Close()
	return c.CallInto(ctx, method, params, out)
}

type bootState struct {
	ActiveSlot    int  `json:"active_slot"`
	RevertSlot    int  `json:"revert_slot"`
	IsCommitted   bool `json:"is_committed"`
	CommitTimeout int  `json:"commit_timeout"`
}

type sysInfo struct {
	FWVersion string `json:"fw_version"`
}

// waitFor polls the device until cond holds for its boot state and
// version, across the reboot that follows an update.
func waitFor(t *testing.T, p *emulatorProc, what string, cond func(bootState, string) bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var bs bootState
	var info sysInfo
	for time.Now().Before(deadline) {
		if callDevice(t, p.port, "OTA.GetBootState", nil, &bs) == nil &&
			callDevice(t, p.port, "Sys.GetInfo", nil, &info) == nil && cond(bs, info.FWVersion) {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("device never reached %s: last boot state %+v, version %q\n%s", what, bs, info.FWVersion, p.log.String())
}

func serveBundle(t *testing.T, version string) string {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "fw.zip")
	m := &bundle.Manifest{Name: "demo-app", Platform: "esp32", Version: version, BuildID: "build-" + version}
	parts := []bundle.PartData{
		bundle.BytesData("app", bundle.Part{Type: "app", Src: "app.bin", Addr: bundle.Int64(0x10000)}, bytes.Repeat([]byte("fw "+version), 20000)),
	}
	if err := bundle.CreateFile(path, m, parts, nil); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.FileServer(http.Dir(dir)))
	t.Cleanup(srv.Close)
	return srv.URL + "/fw.zip"
}

// A killed emulator is a power cut, and a restart on the same state dir is
// a boot: uncommitted firmware must not survive it, committed firmware must.
func TestEmulatorProcessSurvivesSIGKILL(t *testing.T) {
	state := filepath.Join(t.TempDir(), "flash")
	url := serveBundle(t, "2.0.0")

	p := startEmulatorProc(t, state)
	if err := callDevice(t, p.port, "OTA.Update", map[string]any{"url": url, "commit_timeout": 300}, nil); err != nil {
		t.Fatalf("OTA.Update: %v\n%s", err, p.log.String())
	}
	waitFor(t, p, "2.0.0 uncommitted on slot 1", func(b bootState, v string) bool {
		return v == "2.0.0" && b == bootState{ActiveSlot: 1, RevertSlot: 0, IsCommitted: false, CommitTimeout: 300}
	})
	p.kill()

	p = startEmulatorProc(t, state)
	waitFor(t, p, "1.0.0 committed on slot 0 after the power cut", func(b bootState, v string) bool {
		return v == "1.0.0" && b.ActiveSlot == 0 && b.IsCommitted
	})

	// Update again, commit, then cut the power: the new firmware stays.
	if err := callDevice(t, p.port, "OTA.Update", map[string]any{"url": url, "commit_timeout": "300"}, nil); err != nil {
		t.Fatalf("second OTA.Update: %v", err)
	}
	waitFor(t, p, "2.0.0 uncommitted again", func(b bootState, v string) bool {
		return v == "2.0.0" && !b.IsCommitted
	})
	if err := callDevice(t, p.port, "OTA.Commit", nil, nil); err != nil {
		t.Fatalf("OTA.Commit: %v", err)
	}
	p.kill()

	p = startEmulatorProc(t, state)
	waitFor(t, p, "2.0.0 committed after the power cut", func(b bootState, v string) bool {
		return v == "2.0.0" && b.ActiveSlot == 1 && b.IsCommitted
	})
	p.kill()
}

func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Setup: func(env *testscript.Env) error {
			env.Setenv("NO_COLOR", "1")
			// A -race binary sleeps 1s at exit by default (to let reports
			// flush): every otactl the scripts run would cost a second.
			gorace := "atexit_sleep_ms=0"
			if v := os.Getenv("GORACE"); v != "" {
				gorace = v + " " + gorace
			}
			env.Setenv("GORACE", gorace)
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"waitready": cmdWaitReady,
			"exitcode":  cmdExitCode,
			"jsonget":   cmdJSONGet,
			"serve":     cmdServe,
			"waitfor":   cmdWaitFor,
			"waitline":  cmdWaitLine,
			"mkfile":    cmdMkfile,
			"corrupt":   cmdCorrupt,
			"expandenv": cmdExpandEnv,
			"deflate":   cmdDeflate,
			"subst":     cmdSubst,
			// signed bundles (sign_cmds_test.go)
			"tamper":      cmdTamper,
			"treehash":    cmdTreeHash,
			"manifestout": cmdManifestOut,
			"setsig":      cmdSetSig,
			// secured devices (secured_cmds_test.go)
			"mkpki":    cmdMkPKI,
			"htdigest": cmdHTDigest,
		},
	})
}

// cmdWaitReady waits for an emulator's --ready-file and sets HTTP_PORT,
// WS_PORT, SERIAL_PORT and MQTT_PORT from it (the first device's, with
// --count); for each device of a --count emulator it also sets
// <TRANSPORT>_PORT_<ID> (ID in capitals, "-" and other punctuation as "_":
// HTTP_PORT_DEV_0002), and HOST_HTTP and HOST_BROKER from its "http" and
// "broker":
//
//	waitready FILE
func cmdWaitReady(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: waitready FILE")
	}
	path := ts.MkAbs(args[0])
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, err := os.ReadFile(path)
		if err == nil {
			type listener struct{ Transport, Addr string }
			var r struct {
				Listeners    []listener
				HTTP, Broker string
				Devices      []struct {
					ID        string
					Listeners []listener
				}
			}
			ts.Check(json.Unmarshal(b, &r))
			for _, l := range r.Listeners {
				ts.Setenv(strings.ToUpper(l.Transport)+"_PORT", l.Addr)
			}
			ts.Setenv("HOST_HTTP", r.HTTP)
			ts.Setenv("HOST_BROKER", r.Broker)
			for _, d := range r.Devices {
				id := strings.Map(func(c rune) rune {
					if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
						return c
					}
					return '_'
				}, d.ID)
				for _, l := range d.Listeners {
					ts.Setenv(strings.ToUpper(l.Transport+"_PORT_"+id), l.Addr)
				}
			}
			return
		}
		if time.Now().After(deadline) {
			ts.Fatalf("emulator not ready after 20s: %s missing", path)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cmdExitCode runs a program like exec and checks its exact exit code
// (exec only tells zero from non-zero); stdout and stderr are kept for the
// next stdout/stderr commands:
//
//	exitcode N PROG [ARGS...]
func cmdExitCode(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: exitcode N PROG [ARGS...]")
	}
	want, err := strconv.Atoi(args[0])
	if err != nil {
		ts.Fatalf("exitcode: %q is not a number", args[0])
	}
	got := 0
	if err := ts.Exec(args[1], args[2:]...); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			ts.Fatalf("exitcode: running %s: %v", args[1], err)
		}
		got = ee.ExitCode()
	}
	if got != want {
		ts.Fatalf("%s exited with %d, want %d", args[1], got, want)
	}
}

// cmdJSONGet decodes a JSON document (a file, or "stdout"/"stderr" of the
// last command) and checks the value at a dotted path (array elements by
// index: entries.0.name). WANT is compared with a string value as is and
// with any other value as compact JSON (true, 3, null, {"a":1}); ~RE
// matches a regexp against that form, >N and <N compare numbers. Without
// WANT it checks that the path exists; with !, that it does not. ! with
// WANT wants the value to differ (a missing path still fails).
//
//	jsonget FILE PATH [WANT]
func cmdJSONGet(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) < 2 || len(args) > 3 {
		ts.Fatalf("usage: jsonget FILE PATH [WANT]")
	}
	doc := ts.ReadFile(args[0])
	v, err := jsonPath(doc, args[1])
	if err != nil {
		if neg && len(args) == 2 {
			return
		}
		ts.Fatalf("jsonget %s: %v\n%s", args[0], err, doc)
	}
	if len(args) == 2 {
		if neg {
			ts.Fatalf("jsonget %s: %s exists: %s", args[0], args[1], jsonText(v))
		}
		return
	}
	ok, err := jsonMatch(v, args[2])
	if err != nil {
		ts.Fatalf("jsonget: %v", err)
	}
	if ok == neg {
		not := ""
		if neg {
			not = "not "
		}
		ts.Fatalf("jsonget %s: %s is %s, want %s%s", args[0], args[1], jsonText(v), not, args[2])
	}
}

// jsonPath decodes doc and walks the dotted path ("." alone is the whole
// document).
func jsonPath(doc, path string) (any, error) {
	var v any
	dec := json.NewDecoder(strings.NewReader(doc))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("not a JSON document: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("more than one JSON document")
	}
	if path == "." {
		return v, nil
	}
	for _, key := range strings.Split(path, ".") {
		switch x := v.(type) {
		case map[string]any:
			e, ok := x[key]
			if !ok {
				return nil, fmt.Errorf("no field %q in %s (path %s)", key, jsonText(x), path)
			}
			v = e
		case []any:
			i, err := strconv.Atoi(key)
			if err != nil || i < 0 || i >= len(x) {
				return nil, fmt.Errorf("no element %q in an array of %d (path %s)", key, len(x), path)
			}
			v = x[i]
		default:
			return nil, fmt.Errorf("%s is not an object or array (path %s)", jsonText(v), path)
		}
	}
	return v, nil
}

// jsonText is a string value itself, or any other value as compact JSON.
func jsonText(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func jsonMatch(v any, want string) (bool, error) {
	got := jsonText(v)
	switch {
	case strings.HasPrefix(want, "~"):
		re, err := regexp.Compile(want[1:])
		if err != nil {
			return false, err
		}
		return re.MatchString(got), nil
	case strings.HasPrefix(want, ">") || strings.HasPrefix(want, "<"):
		n, ok := v.(json.Number)
		if !ok {
			return false, nil
		}
		x, err1 := n.Float64()
		w, err2 := strconv.ParseFloat(want[1:], 64)
		if err1 != nil || err2 != nil {
			return false, fmt.Errorf("cannot compare %s with %s", got, want)
		}
		if want[0] == '>' {
			return x > w, nil
		}
		return x < w, nil
	}
	return got == want, nil
}

// cmdServe serves DIR over HTTP on 127.0.0.1 until the script ends and
// sets SERVE_URL to its base URL (no trailing slash). With -drip, each
// file is sent with its Content-Length and then one byte every 200 ms (a
// stalled or hostile server):
//
//	serve [-drip] DIR
func cmdServe(ts *testscript.TestScript, neg bool, args []string) {
	drip := len(args) == 2 && args[0] == "-drip"
	if drip {
		args = args[1:]
	}
	if neg || len(args) != 1 {
		ts.Fatalf("usage: serve [-drip] DIR")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	ts.Check(err)
	var h http.Handler = http.FileServer(http.Dir(ts.MkAbs(args[0])))
	stop := make(chan struct{})
	if drip {
		dir := ts.MkAbs(args[0])
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, err := os.ReadFile(filepath.Join(dir, filepath.Base(r.URL.Path)))
			if err != nil {
				http.NotFound(w, r)
				return
			}
			w.Header().Set("Content-Length", strconv.Itoa(len(b)))
			for i := range b {
				if _, err := w.Write(b[i : i+1]); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				select {
				case <-time.After(200 * time.Millisecond):
				case <-r.Context().Done():
					return
				case <-stop:
					return
				}
			}
		})
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	ts.Defer(func() {
		close(stop)
		_ = srv.Close()
		<-done
	})
	ts.Setenv("SERVE_URL", "http://"+ln.Addr().String())
}

// cmdWaitFor runs a program every 100ms until its stdout is a JSON
// document in which every PATH=VALUE holds (compared like jsonget), or
// fails after TIMEOUT. The exit status does not matter (an --json error
// document can be waited for: exit_code=5); runs that print no such
// document (the device rebooting) are retried. stdout and stderr of the
// last run are kept:
//
//	waitfor TIMEOUT PATH=VALUE[,PATH=VALUE...] PROG [ARGS...]
func cmdWaitFor(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 3 {
		ts.Fatalf("usage: waitfor TIMEOUT PATH=VALUE[,PATH=VALUE...] PROG [ARGS...]")
	}
	timeout, err := time.ParseDuration(args[0])
	ts.Check(err)
	var conds [][2]string
	for _, c := range strings.Split(args[1], ",") {
		k, v, ok := strings.Cut(c, "=")
		if !ok {
			ts.Fatalf("waitfor: condition %q is not PATH=VALUE", c)
		}
		conds = append(conds, [2]string{k, v})
	}
	deadline := time.Now().Add(timeout)
	var last string
	for {
		start := time.Now()
		err := ts.Exec(args[2], args[3:]...)
		out := ts.ReadFile("stdout")
		last = fmt.Sprintf("exit error %v, stdout:\n%s\nstderr:\n%s", err, out, ts.ReadFile("stderr"))
		if jsonHolds(out, conds) {
			ts.Logf("waitfor: holds after %v", time.Since(start).Round(time.Millisecond))
			return
		}
		if time.Now().After(deadline) {
			ts.Fatalf("waitfor: %s did not hold within %v; last run: %s", args[1], timeout, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// cmdWaitLine waits until a line of FILE (written by a background
// command) matches REGEXP, checking every 50ms, or fails after TIMEOUT:
//
//	waitline TIMEOUT FILE REGEXP
func cmdWaitLine(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 3 {
		ts.Fatalf("usage: waitline TIMEOUT FILE REGEXP")
	}
	timeout, err := time.ParseDuration(args[0])
	ts.Check(err)
	re, err := regexp.Compile("(?m)" + args[2])
	ts.Check(err)
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(ts.MkAbs(args[1]))
		if re.Match(b) {
			return
		}
		if time.Now().After(deadline) {
			ts.Fatalf("waitline: no line of %s matches %q within %v; it holds:\n%s", args[1], args[2], timeout, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func jsonHolds(doc string, conds [][2]string) bool {
	for _, c := range conds {
		v, err := jsonPath(doc, c[0])
		if err != nil {
			return false
		}
		if ok, err := jsonMatch(v, c[1]); err != nil || !ok {
			return false
		}
	}
	return true
}

// cmdMkfile writes SIZE deterministic, incompressible-looking bytes to
// FILE (firmware images bigger than a txtar section wants to hold):
//
//	mkfile FILE SIZE
func cmdMkfile(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: mkfile FILE SIZE")
	}
	n, err := strconv.Atoi(args[1])
	ts.Check(err)
	b := make([]byte, n)
	x := uint32(2463534242)
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	ts.Check(os.WriteFile(ts.MkAbs(args[0]), b, 0o644))
}

// cmdCorrupt flips the bits of one byte of FILE at OFFSET (negative:
// from the end):
//
//	corrupt FILE OFFSET
func cmdCorrupt(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: corrupt FILE OFFSET")
	}
	off, err := strconv.Atoi(args[1])
	ts.Check(err)
	path := ts.MkAbs(args[0])
	b, err := os.ReadFile(path)
	ts.Check(err)
	if off < 0 {
		off += len(b)
	}
	if off < 0 || off >= len(b) {
		ts.Fatalf("corrupt: offset %s outside %s (%d bytes)", args[1], args[0], len(b))
	}
	b[off] ^= 0xff
	ts.Check(os.WriteFile(path, b, 0o644))
}
