package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
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
)

// TestMain lets the test binary act as the otactl command (testscript puts
// it on PATH as "otactl"), so end-to-end tests run the real CLI in its own
// process.
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"otactl": func() { os.Exit(cli.Main(os.Args[1:], cli.SystemIO(), os.Getenv)) },
	})
}

// emulatorProc is an `otactl emulator` process.
type emulatorProc struct {
	cmd  *exec.Cmd
	port string
	log  *bytes.Buffer
}

func startEmulatorProc(t *testing.T, stateDir string) *emulatorProc {
	t.Helper()
	ready := filepath.Join(t.TempDir(), "ready.json")
	var log bytes.Buffer
	cmd := exec.Command("otactl", "emulator", "--state-dir", stateDir, "--listen", "127.0.0.1:0",
		"--reboot-delay", "50ms", "--ready-file", ready)
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
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"waitready": cmdWaitReady,
		},
	})
}

// cmdWaitReady waits for an emulator's --ready-file and sets HTTP_PORT,
// WS_PORT, SERIAL_PORT and MQTT_PORT from it:
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
			var r struct {
				Listeners []struct{ Transport, Addr string }
			}
			ts.Check(json.Unmarshal(b, &r))
			for _, l := range r.Listeners {
				ts.Setenv(strings.ToUpper(l.Transport)+"_PORT", l.Addr)
			}
			return
		}
		if time.Now().After(deadline) {
			ts.Fatalf("emulator not ready after 20s: %s missing", path)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
