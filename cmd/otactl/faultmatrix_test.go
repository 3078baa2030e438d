package main

import (
	"archive/zip"
	"bufio"
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/ota/bundle"
	"github.com/otactl/otactl/pkg/transport/mqtt/mqtttest"
)

// The fault matrix (docs/reliability.md, "The fault matrix"): each row runs
// the real otactl binary against a real `otactl emulator` process and a
// bundle server on loopback, injects one fault, and checks what otactl says
// (key words of the message, in --json and, where the fault can be repeated,
// in text), its exit code, the --json reason and result, the boot state
// afterwards, and that the device still answers and takes the next update.
// Rows run in parallel, each with its own emulator and server.
//
//	go test -race -run TestFaultMatrix -v ./cmd/otactl
//
// (MATRIX_DEBUG=1 runs the faulty command with -v.)
func TestFaultMatrix(t *testing.T) {
	// The rows mostly wait on processes, so several run at once (t.Parallel
	// would run at most -parallel, GOMAXPROCS by default), but not all:
	// 33 emulators and otactls under -race on a small machine took longer
	// to start than the --timeout the rows give otactl.
	var wg sync.WaitGroup
	slots := make(chan struct{}, matrixRowsAtOnce)
	for _, row := range faultRows() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			slots <- struct{}{}
			defer func() { <-slots }()
			t.Run(row.name, func(t *testing.T) { runFaultRow(t, row) })
		}()
	}
	wg.Wait()
}

// matrixRowsAtOnce is how many rows run at the same time.
const matrixRowsAtOnce = 6

// faultRow is one row of the matrix.
type faultRow struct {
	name string
	// fault is how the bundle server answers the download of /fw.zip.
	fault serveFault
	// transport is the link between otactl and the device: "" (HTTP),
	// "ws", "serial" (a pty at a real UART's 115200 baud, so that a push
	// takes long enough to be cut) or "mqtt" (an in-process broker, which
	// the row may restart; otactl's --port is the device's MQTT URL).
	transport string
	// proxy: otactl reaches the device through a TCP proxy on loopback
	// that the row may cut (every connection through it closes at once;
	// new ones are let through), a lost link.
	proxy bool
	// cmd is the otactl command after the global flags; "URL" stands for
	// the bundle server's base URL, "FW" for the bundle file.
	cmd []string
	// inject, when set, runs alongside the command: the fault that is not
	// the bundle server's.
	inject func(t *testing.T, r *rowRun)
	// text: the fault can be repeated, so the command also runs in text
	// mode and must exit alike and say the same words.
	text bool
	want rowVerdict
	// knownBug, when set, names an open defect that makes the row fail
	// at times: the row is skipped unless MATRIX_KNOWN_BUGS is set.
	knownBug string
}

// rowVerdict is what otactl must report, and the device's state after.
type rowVerdict struct {
	exit           int
	reason, result string
	// words must all appear in the message (--json message and error;
	// stdout and stderr in text), ignoring case.
	words []string
	// updated: the device runs 2.0.0 committed after the row (else
	// 1.0.0, committed, slot 0); with uncommitted, 2.0.0 on trial (the
	// row then commits it before the next update).
	updated, uncommitted bool
	// resumed: a push that must have gone on after a lost link, resumed
	// on a new link (WebSocket, MQTT) or resending writes whose
	// connections broke (HTTP, where each write has its own request).
	resumed bool
	// untouched: the bundle server must not have been asked for anything.
	untouched bool
}

func faultRows() []faultRow {
	update := []string{"update", "--url", "URL/fw.zip", "--commit", "--update-timeout", "30s"}
	push := []string{"push", "FW", "--commit"}
	oldFW := rowVerdict{exit: 6, result: "not_applied"}
	with := func(v rowVerdict, reason string, words ...string) rowVerdict {
		v.reason, v.words = reason, words
		return v
	}
	updated := rowVerdict{exit: 0, reason: "ok", result: "updated_committed", words: []string{"2.0.0", "committed"}, updated: true}
	pushed := updated
	pushed.resumed, pushed.untouched = true, true
	pushReset := with(oldFW, "device_reset", "was reset", "nothing was applied", "boot state is unchanged")
	pushReset.untouched = true
	return []faultRow{
		{name: "http_404", fault: fault404, cmd: update, text: true,
			want: with(oldFW, "download_failed", "Invalid HTTP response code 404", "boot state is unchanged")},
		{name: "http_500", fault: fault500, cmd: update, text: true,
			want: with(oldFW, "download_failed", "Invalid HTTP response code 500", "boot state is unchanged")},
		// Odd requests fail: the first update fails, the next one (in
		// runFaultRow, through the same server) gets the bundle.
		{name: "every_second_request_fails", fault: faultFlaky, cmd: update,
			want: with(oldFW, "download_failed", "Invalid HTTP response code 500")},
		{name: "connection_dropped_mid_body", fault: faultDropMidBody, cmd: update, text: true,
			want: with(oldFW, "download_failed", "Update failed", "boot state is unchanged")},
		{name: "stalled_server", fault: faultStall, text: true,
			cmd:  []string{"update", "--url", "URL/fw.zip", "--commit", "--update-timeout", "2s"},
			want: with(oldFW, "update_timeout", "Update timed out", "boot state is unchanged")},
		// The download ends (as HTTP says) before the archive does: the
		// bundle is fine, the download is not.
		{name: "content_length_shorter_than_body", fault: faultShortLength, cmd: update, text: true,
			want: with(oldFW, "download_failed", "Update failed", "boot state is unchanged")},
		// The whole archive arrives before the connection closes short of
		// its Content-Length: the device has every byte, checked, and
		// installs it.
		{name: "content_length_longer_than_body", fault: faultLongLength, cmd: update,
			want: rowVerdict{exit: 0, reason: "ok", result: "updated_committed", words: []string{"2.0.0", "committed"}, updated: true}},
		{name: "redirect_loop", fault: faultRedirectLoop, cmd: update, text: true,
			want: with(oldFW, "download_failed", "Update failed", "boot state is unchanged")},
		// A bundle cut short on the server, served with its (honest)
		// length: to the device it is a download that ended early.
		{name: "truncated_bundle", fault: faultTruncatedFile, cmd: update, text: true,
			want: with(oldFW, "download_failed", "Update failed", "boot state is unchanged")},
		// An HTML page where the bundle should be.
		{name: "garbage_bundle", fault: faultGarbage, cmd: update, text: true,
			want: with(oldFW, "corrupt_bundle", "Malformed archive", "boot state is unchanged")},
		// Issue 7 defect 3: one byte every 100 ms never stalls the
		// download, but --update-timeout bounds the whole update.
		{name: "drip_fed_download", fault: faultDrip, text: true,
			cmd:  []string{"update", "--url", "URL/fw.zip", "--commit", "--update-timeout", "2s"},
			want: with(oldFW, "update_timeout", "Update timed out", "boot state is unchanged")},
		// otactl cannot see the platform of a bundle behind --url: the
		// device refuses it.
		{name: "wrong_platform_url", fault: faultWrongPlatform, cmd: update, text: true,
			want: with(oldFW, "wrong_platform", "boot state is unchanged")},
		// Issue 7 defect 6 at the CLI: the device refuses the bundle itself.
		{name: "duplicate_part_src", fault: faultDuplicateSrc, cmd: update, text: true,
			want: with(oldFW, "corrupt_bundle", "Duplicate part src", "boot state is unchanged")},
		// Issue 7 defect 1 at the CLI: refused before anything is sent.
		{name: "commit_timeout_overflow", cmd: []string{"update", "--url", "URL/fw.zip", "--commit-timeout", "9223372036"}, text: true,
			want: rowVerdict{exit: 2, reason: "usage", result: "not_applied", words: []string{"from 1 to 2147483 seconds"}, untouched: true}},
		// Issue 7 defect 4 (first bullet) at the CLI: a reset during the
		// download is not a rollback.
		{name: "device_reset_mid_download", fault: faultStallMidBody, cmd: update, inject: injectReset,
			want: with(oldFW, "device_reset", "restarted before it had installed the update", "boot state unchanged")},
		{name: "power_cut_mid_download", fault: faultStallMidBody, cmd: update, inject: injectPowerCut,
			want: with(oldFW, "device_reset", "restarted before it had installed the update", "boot state unchanged")},
		// The link between otactl and the device breaks while the device
		// downloads: the device goes on, otactl reconnects and follows
		// the update to its end.
		{name: "link_cut_mid_download_ws", transport: "ws", proxy: true, fault: faultPauseMidBody, cmd: update, inject: injectLinkCutMidDownload,
			want: updated},
		// The link stays down until otactl gives up: it cannot tell what
		// the device did, and says so (the device meanwhile installs the
		// update and boots it on trial).
		{name: "link_down_mid_download_ws", transport: "ws", proxy: true, fault: faultPauseMidBody, cmd: update, inject: injectLinkDownMidDownload,
			want: rowVerdict{exit: 5, reason: "timeout", result: "unknown", updated: true, uncommitted: true,
				words: []string{"lost the link before the device answered OTA.Update", "may still be running", "otactl status"}}},
		{name: "broker_restart_mid_download", transport: "mqtt", fault: faultPauseMidBody, cmd: update, inject: injectBrokerRestartMidDownload,
			want: updated},
		{name: "broker_restart_during_wait_for_reboot", transport: "mqtt", cmd: update, inject: injectBrokerRestartAtReboot,
			want: updated},

		// Push. A lost link is resumed at the offset the device expects.
		{name: "link_cut_mid_push_http", proxy: true, cmd: push, inject: injectLinkCutMidPush,
			want: pushed},
		{name: "link_cut_mid_push_ws", transport: "ws", proxy: true, cmd: push, inject: injectLinkCutMidPush,
			want: pushed},
		{name: "broker_restart_during_push", transport: "mqtt", cmd: push, inject: injectBrokerRestartMidPush,
			want: pushed},
		// A device reset (or power cut) during a push loses the update:
		// one cause, one verdict on every transport.
		{name: "device_reset_mid_push_http", proxy: true, cmd: push, inject: injectResetMidPush,
			want: pushReset},
		{name: "device_reset_mid_push_ws", transport: "ws", proxy: true, cmd: push, inject: injectResetMidPush,
			want: pushReset},
		{name: "device_reset_mid_push_serial", transport: "serial", cmd: push, inject: injectResetMidPush,
			want: pushReset},
		{name: "device_reset_mid_push_mqtt", transport: "mqtt", cmd: push, inject: injectResetMidPush,
			want: pushReset},
		{name: "power_cut_mid_push_serial", transport: "serial", cmd: push, inject: injectPowerCutMidPush,
			want: pushReset},
		{name: "power_cut_mid_push_ws", transport: "ws", proxy: true, cmd: push, inject: injectPowerCutMidPush,
			want: pushReset},
	}
}

// rowRun is the running row: its device, bundle server and broker.
type rowRun struct {
	t      *testing.T
	row    faultRow
	emu    *emuProc
	srv    *faultServer
	proxy  *cutProxy
	broker *mqtttest.Broker
	port   string // otactl's --port
	fwFile string // the 2.0.0 bundle as a file (push)

	brokerMu sync.Mutex
	writes   atomic.Int32  // OTA.Writes seen on the broker
	trig     chan struct{} // closed once the push is well under way
	trigOnce sync.Once
	cmdDone  chan struct{} // closed once the faulty run ended
}

// pushTriggerWrites and pushTriggerBytes say when a push is well under way
// (about a quarter of the 200 KiB bundle in): the fifth OTA.Write on the
// broker, or so many bytes from otactl through the proxy.
const (
	pushTriggerWrites = 5
	pushTriggerBytes  = 64 << 10
)

func (r *rowRun) fire() { r.trigOnce.Do(func() { close(r.trig) }) }

func runFaultRow(t *testing.T, row faultRow) {
	if row.knownBug != "" && os.Getenv("MATRIX_KNOWN_BUGS") == "" {
		t.Skipf("known bug (set MATRIX_KNOWN_BUGS=1 to run): %s", row.knownBug)
	}
	r := &rowRun{t: t, row: row, trig: make(chan struct{}), cmdDone: make(chan struct{})}
	fw := matrixBundle(t, "2.0.0", "esp32", 200<<10)
	next := matrixBundle(t, "3.0.0", "esp32", 20<<10)
	r.fwFile = filepath.Join(t.TempDir(), "fw.zip")
	if err := os.WriteFile(r.fwFile, fw, 0o644); err != nil {
		t.Fatal(err)
	}
	r.srv = startFaultServer(t, row.fault, fw, next)
	var extra []string
	switch row.transport {
	case "mqtt":
		r.broker = mqtttest.Start(t, mqtttest.Config{OnPublish: r.onPublish})
		extra = append(extra, "--mqtt-broker", r.broker.URL)
	case "serial":
		extra = append(extra, "--serial-link", filepath.Join(t.TempDir(), "tty"), "--serial-baud", "115200")
	}
	r.emu = startMatrixEmu(t, extra...)
	switch row.transport {
	case "":
		r.port = r.emu.http
	case "mqtt":
		r.port = r.broker.URL + "/dev1"
	default:
		r.port = r.emu.listeners[row.transport]
	}
	if r.port == "" {
		t.Fatalf("the emulator has no %s listener:\n%s", row.transport, r.emu.log.String())
	}
	if row.proxy {
		u, err := url.Parse(r.port)
		if err != nil {
			t.Fatal(err)
		}
		r.proxy = startCutProxy(t, u.Host, pushTriggerBytes, r.fire)
		u.Host = r.proxy.addr
		r.port = u.String()
	}

	args := make([]string, len(row.cmd))
	for i, a := range row.cmd {
		a = strings.ReplaceAll(a, "URL", r.srv.url)
		args[i] = strings.ReplaceAll(a, "FW", r.fwFile)
	}
	global := []string{"--port", r.port, "--timeout", "10s"}

	// The faulty run, with --json.
	injected := make(chan struct{})
	go func() {
		defer close(injected)
		if row.inject != nil {
			row.inject(t, r)
		}
	}()
	res := runMatrixOtactl(t, append(append(append(global, "--json"), dbgArgs()...), args...)...)
	close(r.cmdDone)
	<-injected
	t.Logf("otactl --json: exit %d in %v\n%s%s", res.code, res.took.Round(time.Millisecond), res.stdout, res.stderr)
	doc := checkMatrixDoc(t, res, row.want)

	// The same fault again, in text mode.
	if row.text {
		tres := runMatrixOtactl(t, append(global, args...)...)
		t.Logf("otactl: exit %d in %v\n%s%s", tres.code, tres.took.Round(time.Millisecond), tres.stdout, tres.stderr)
		if tres.code != row.want.exit {
			t.Errorf("text mode: exit %d, want %d as with --json", tres.code, row.want.exit)
		}
		checkWords(t, "text output", tres.stdout+tres.stderr, row.want.words)
	}
	if row.want.resumed && doc.Transfer.Resumes+doc.Transfer.Retries < 1 {
		t.Errorf("the push neither resumed nor resent a write after the lost link: transfer %+v", doc.Transfer)
	}
	if row.proxy && !r.proxy.wasCut() && row.inject != nil && strings.HasPrefix(row.name, "link_cut") {
		t.Errorf("the link was never cut")
	}
	if row.want.untouched && r.srv.requests.Load() != 0 {
		t.Errorf("the bundle server was asked %d times, want never", r.srv.requests.Load())
	}

	// The boot state afterwards, and a device that still answers.
	bs := runMatrixOtactl(t, append(global, "--json", "bootstate")...)
	var b struct {
		ActiveSlot  int  `json:"active_slot"`
		IsCommitted bool `json:"is_committed"`
		Running     struct {
			Slot    int
			Version string
		}
	}
	if bs.code != 0 || json.Unmarshal([]byte(bs.stdout), &b) != nil {
		t.Fatalf("bootstate after the fault: exit %d\n%s%s", bs.code, bs.stdout, bs.stderr)
	}
	wantSlot, wantVersion := 0, "1.0.0"
	if row.want.updated {
		wantSlot, wantVersion = 1, "2.0.0"
	}
	if b.ActiveSlot != wantSlot || b.IsCommitted == row.want.uncommitted || b.Running.Slot != wantSlot || b.Running.Version != wantVersion {
		t.Errorf("boot state after the fault: %s, want slot %d running %s, committed %v", bs.stdout, wantSlot, wantVersion, !row.want.uncommitted)
	}
	if row.want.uncommitted {
		if c := runMatrixOtactl(t, append(global, "commit")...); c.code != 0 {
			t.Errorf("commit after the fault: exit %d\n%s%s", c.code, c.stdout, c.stderr)
		}
	}

	// The device takes the next update (through the same server).
	nx := runMatrixOtactl(t, append(global, "--json", "update", "--url", r.srv.url+"/next.zip", "--commit")...)
	var n struct {
		Result, Version string
		ExitCode        int `json:"exit_code"`
	}
	if nx.code != 0 || json.Unmarshal([]byte(nx.stdout), &n) != nil || n.Result != "updated_committed" || n.Version != "3.0.0" {
		t.Errorf("the next update: exit %d\n%s%s", nx.code, nx.stdout, nx.stderr)
	}
	t.Logf("bootstate: %v, next update: %v", bs.took.Round(time.Millisecond), nx.took.Round(time.Millisecond))
}

// matrixDoc is the part of update's and push's --json document the matrix
// checks.
type matrixDoc struct {
	Result   string `json:"result"`
	Reason   string `json:"reason"`
	Message  string `json:"message"`
	Error    string `json:"error"`
	ExitCode int    `json:"exit_code"`
	Transfer struct {
		Resumes int `json:"resumes"`
		Retries int `json:"retries"`
	} `json:"transfer"`
}

func checkMatrixDoc(t *testing.T, res matrixResult, want rowVerdict) matrixDoc {
	t.Helper()
	var doc matrixDoc
	if err := json.Unmarshal([]byte(res.stdout), &doc); err != nil {
		t.Fatalf("--json: stdout is not one JSON document (%v):\n%s%s", err, res.stdout, res.stderr)
	}
	if res.code != want.exit || doc.ExitCode != want.exit {
		t.Errorf("exit %d (exit_code %d in the document), want %d", res.code, doc.ExitCode, want.exit)
	}
	if doc.Reason != want.reason {
		t.Errorf("reason %q, want %q", doc.Reason, want.reason)
	}
	if doc.Result != want.result {
		t.Errorf("result %q, want %q", doc.Result, want.result)
	}
	checkWords(t, "--json message", doc.Message+"\n"+doc.Error, want.words)
	return doc
}

func checkWords(t *testing.T, what, text string, words []string) {
	t.Helper()
	for _, w := range words {
		if !strings.Contains(strings.ToLower(text), strings.ToLower(w)) {
			t.Errorf("%s does not say %q:\n%s", what, w, text)
		}
	}
}

// Injections.

// injectReset reboots the device (Sys.Reboot) once half the bundle is in.
func injectReset(t *testing.T, r *rowRun) {
	if !r.srv.waitMidBody(t) {
		return
	}
	r.reboot(t)
}

// reboot has the device reboot (Sys.Reboot over its own HTTP listener).
// As a real device, the emulator replies before it reboots.
func (r *rowRun) reboot(t *testing.T) {
	if err := callDevice(t, r.emu.http, "Sys.Reboot", nil, nil); err != nil {
		t.Errorf("Sys.Reboot: %v", err)
	}
}

// injectPowerCut kills the emulator (a power cut) once half the bundle is
// in, and powers it on again on the same flash and address.
func injectPowerCut(t *testing.T, r *rowRun) {
	if !r.srv.waitMidBody(t) {
		return
	}
	r.emu.kill()
	r.emu.start()
}

// injectBrokerRestartAtReboot stops the broker as the device reboots into
// the new firmware, while otactl waits for it, and starts it again once the
// device has booted without it (so both ends must reconnect).
func injectBrokerRestartAtReboot(t *testing.T, r *rowRun) {
	if !r.emu.waitLog(t, "dev1: rebooting") {
		return
	}
	down := r.emu.logMark("MQTT broker unreachable")
	r.restartBroker(t, down)
}

// injectBrokerRestartMidPush restarts the broker once the push is well
// under way (its fifth OTA.Write went through the broker).
func injectBrokerRestartMidPush(t *testing.T, r *rowRun) {
	if !r.waitPushUnderWay(t) {
		return
	}
	r.restartBroker(t, nil)
}

// injectBrokerRestartMidDownload restarts the broker while the device
// downloads (OTA.Update in flight, its reply to come through the broker),
// and lets the download finish once the device has noticed the outage.
func injectBrokerRestartMidDownload(t *testing.T, r *rowRun) {
	if !r.srv.waitMidBody(t) {
		return
	}
	down := r.emu.logMark("MQTT connect failed")
	r.restartBroker(t, down)
	r.srv.releaseBody()
}

// injectLinkCutMidDownload cuts the link between otactl and the device
// while the device downloads (OTA.Update in flight), then lets the
// download finish.
func injectLinkCutMidDownload(t *testing.T, r *rowRun) {
	if !r.srv.waitMidBody(t) {
		return
	}
	r.proxy.cut()
	r.srv.releaseBody()
}

// injectLinkDownMidDownload cuts the link between otactl and the device
// while the device downloads, and keeps it down until otactl gave up; then
// the download finishes (the device installs the update and reboots into
// it, uncommitted, with no one to commit it).
func injectLinkDownMidDownload(t *testing.T, r *rowRun) {
	if !r.srv.waitMidBody(t) {
		return
	}
	r.proxy.block()
	<-r.cmdDone
	r.proxy.unblock()
	booted := r.emu.logMark("Arming commit watchdog")
	r.srv.releaseBody()
	select { // before the row reads the boot state
	case <-booted:
	case <-time.After(30 * time.Second):
		t.Error("the device never booted the update")
	}
}

// injectLinkCutMidPush cuts the link between otactl and the device once
// the push is well under way, in the middle of the write that crosses
// pushTriggerBytes (the proxy cuts as that write goes through).
func injectLinkCutMidPush(t *testing.T, r *rowRun) {
	r.proxy.cutAtTrigger.Store(true)
	r.waitPushUnderWay(t)
}

// injectResetMidPush reboots the device (Sys.Reboot, over its own HTTP
// listener, not otactl's link) once the push is well under way.
func injectResetMidPush(t *testing.T, r *rowRun) {
	if !r.waitPushUnderWay(t) {
		return
	}
	r.reboot(t)
}

// injectPowerCutMidPush kills the emulator (a power cut) once the push is
// well under way, and powers it on again on the same flash and addresses.
func injectPowerCutMidPush(t *testing.T, r *rowRun) {
	if !r.waitPushUnderWay(t) {
		return
	}
	r.emu.kill()
	r.emu.start()
}

// waitPushUnderWay waits until the push is well under way: the trigger of
// the broker (MQTT) or of the proxy fired, or (serial, at 115200 baud: a
// 200 KiB push takes about 25 s) OTA.Status shows the update past 10 %,
// polled over the device's HTTP listener.
func (r *rowRun) waitPushUnderWay(t *testing.T) bool {
	if r.row.transport == "serial" {
		for range 300 { // bounded: 30 s
			var st struct {
				State    int `json:"state"`
				Progress int `json:"progress_percent"`
			}
			if err := callDevice(t, r.emu.http, "OTA.Status", nil, &st); err == nil && st.State == 1 && st.Progress >= 10 {
				return true
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Error("the push never got past 10 % within 30 s")
		return false
	}
	select {
	case <-r.trig:
		return true
	case <-time.After(30 * time.Second):
		t.Error("the push never got under way")
		return false
	}
}

// restartBroker closes the broker and starts it again on its address, once
// ready is closed (nil: at once).
func (r *rowRun) restartBroker(t *testing.T, ready <-chan struct{}) {
	r.brokerMu.Lock()
	b := r.broker
	r.brokerMu.Unlock()
	b.Close()
	if ready != nil {
		select {
		case <-ready:
		case <-time.After(20 * time.Second):
			t.Error("the device never noticed its broker was down")
		}
	}
	nb := mqtttest.Start(t, mqtttest.Config{Addr: b.Addr})
	r.brokerMu.Lock()
	r.broker = nb
	r.brokerMu.Unlock()
}

// onPublish watches the broker's messages: the fifth OTA.Write of a push
// fires the row's trigger (waitPushUnderWay).
func (r *rowRun) onPublish(topic string, payload []byte) bool {
	if strings.HasSuffix(topic, "/rpc") && bytes.Contains(payload, []byte(`"OTA.Write"`)) {
		if r.writes.Add(1) == pushTriggerWrites {
			r.fire()
		}
	}
	return false
}

// The bundle server.

type serveFault int

const (
	faultNone serveFault = iota
	fault404
	fault500
	faultFlaky         // odd-numbered requests get 500
	faultDropMidBody   // half the body, then the connection closes
	faultStall         // the header, then nothing
	faultStallMidBody  // half the body, then nothing (until the device goes)
	faultPauseMidBody  // half the body, then the rest once the row says so
	faultShortLength   // Content-Length below the body's length
	faultLongLength    // Content-Length above the body's length, then close
	faultRedirectLoop  // /fw.zip redirects to itself
	faultDuplicateSrc  // a bundle with two parts naming one src
	faultTruncatedFile // the bundle file cut 1000 bytes short, served whole
	faultGarbage       // 200 with an HTML page
	faultDrip          // one byte every 100 ms
	faultWrongPlatform // a bundle for esp8266 (the device is an esp32)
)

// faultServer serves /fw.zip (2.0.0, with the fault) and /next.zip (3.0.0;
// with faultFlaky, also every second request fails).
type faultServer struct {
	url      string
	fault    serveFault
	fw, next []byte
	requests atomic.Int32 // GETs of any path

	midBody chan struct{} // closed once half the body went out (faultStallMidBody, faultPauseMidBody)
	midOnce sync.Once
	release chan struct{} // closed when the rest may go (faultPauseMidBody)
	relOnce sync.Once
	stop    chan struct{}

	mu     sync.Mutex
	hijack []net.Conn
}

func startFaultServer(t *testing.T, fault serveFault, fw, next []byte) *faultServer {
	s := &faultServer{fault: fault, fw: fw, next: next, midBody: make(chan struct{}), release: make(chan struct{}), stop: make(chan struct{})}
	switch fault {
	case faultDuplicateSrc:
		s.fw = duplicateSrcBundle(t)
	case faultTruncatedFile:
		s.fw = fw[:len(fw)-1000]
	case faultGarbage:
		s.fw = []byte("<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Please sign in to download this file.</body></html>\n")
	case faultWrongPlatform:
		s.fw = matrixBundle(t, "2.0.0", "esp8266", 20<<10)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		close(s.stop)
		_ = srv.Close()
		s.mu.Lock()
		for _, c := range s.hijack {
			_ = c.Close()
		}
		s.mu.Unlock()
		<-done
	})
	s.url = "http://" + ln.Addr().String()
	return s
}

func (s *faultServer) waitMidBody(t *testing.T) bool {
	select {
	case <-s.midBody:
		return true
	case <-time.After(30 * time.Second):
		t.Error("the device never got half the bundle")
		return false
	}
}

// releaseBody lets a paused download go on (faultPauseMidBody).
func (s *faultServer) releaseBody() { s.relOnce.Do(func() { close(s.release) }) }

func (s *faultServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := s.requests.Add(1)
	body := s.next
	if r.URL.Path == "/fw.zip" {
		body = s.fw
	} else if r.URL.Path != "/next.zip" {
		http.NotFound(w, r)
		return
	}
	fault := s.fault
	switch {
	case fault == faultFlaky && n%2 == 1:
		http.Error(w, "flaky server: this request fails", http.StatusInternalServerError)
		return
	case fault == faultFlaky || r.URL.Path != "/fw.zip":
		fault = faultNone
	}
	half := len(body) / 2
	switch fault {
	case faultNone, faultDuplicateSrc, faultTruncatedFile, faultWrongPlatform:
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
	case faultGarbage:
		w.Header().Set("Content-Type", "text/html")
		_, _ = w.Write(body)
	case fault404:
		http.NotFound(w, r)
	case fault500:
		http.Error(w, "internal error", http.StatusInternalServerError)
	case faultRedirectLoop:
		http.Redirect(w, r, "/fw.zip?hop="+strconv.Itoa(int(n)), http.StatusFound)
	case faultDropMidBody:
		s.raw(w, len(body), body[:half], false)
	case faultStall:
		s.raw(w, len(body), nil, true)
	case faultStallMidBody:
		s.raw(w, len(body), body[:half], true)
	case faultShortLength:
		s.raw(w, len(body)-1000, body, false)
	case faultLongLength:
		s.raw(w, len(body)+1000, body, false)
	case faultPauseMidBody:
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body[:half])
		w.(http.Flusher).Flush()
		s.midOnce.Do(func() { close(s.midBody) })
		select {
		case <-s.release:
		case <-s.stop:
			return
		case <-r.Context().Done():
			return
		}
		_, _ = w.Write(body[half:])
	case faultDrip:
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		for i := range body { // bounded: the device hangs up at its watchdog
			if _, err := w.Write(body[i : i+1]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-time.After(100 * time.Millisecond):
			case <-s.stop:
				return
			case <-r.Context().Done():
				return
			}
		}
	}
}

// raw answers 200 with the Content-Length given and then data, written on
// the bare connection (net/http would not send a length that lies); then it
// closes the connection, or with stall holds it until the device closes it.
func (s *faultServer) raw(w http.ResponseWriter, length int, data []byte, stall bool) {
	conn, bw, err := w.(http.Hijacker).Hijack()
	if err != nil {
		return
	}
	s.mu.Lock()
	s.hijack = append(s.hijack, conn)
	s.mu.Unlock()
	defer conn.Close()
	fmt.Fprintf(bw, "HTTP/1.1 200 OK\r\nContent-Type: application/zip\r\nContent-Length: %d\r\n\r\n", length)
	_, _ = bw.Write(data)
	if bw.Flush() != nil || !stall {
		return
	}
	s.midOnce.Do(func() { close(s.midBody) })
	// Nothing more: wait for the device to go (its read ends).
	_, _ = bufio.NewReader(conn).ReadByte()
}

// The proxy.

// cutProxy forwards TCP connections on loopback to target; cut closes
// every connection through it at once (a lost link), while new ones are
// let through. It calls fire once after trigger bytes went from the client
// to the device.
type cutProxy struct {
	addr    string
	target  string
	trigger int64
	fire    func()
	up      atomic.Int64
	cuts    atomic.Int32
	blocked atomic.Bool // new connections are closed at once
	// cutAtTrigger: cut every connection the moment trigger bytes went
	// up, in the middle of the request that crossed it.
	cutAtTrigger atomic.Bool

	mu    sync.Mutex
	conns []net.Conn
}

func startCutProxy(t *testing.T, target string, trigger int64, fire func()) *cutProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{addr: ln.Addr().String(), target: target, trigger: trigger, fire: fire}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if p.blocked.Load() {
				c.Close()
				continue
			}
			d, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, d)
			p.mu.Unlock()
			wg.Add(2)
			go func() {
				defer wg.Done()
				p.pipe(d, c, true)
			}()
			go func() {
				defer wg.Done()
				p.pipe(c, d, false)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.cut()
		wg.Wait()
	})
	return p
}

// pipe copies from src to dst until either ends, then closes both.
func (p *cutProxy) pipe(dst, src net.Conn, up bool) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 4096)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
			if up && p.up.Add(int64(n)) >= p.trigger && p.fire != nil {
				if p.cutAtTrigger.CompareAndSwap(true, false) {
					// Cut this very request mid-way: a write in flight
					// whatever the transport (an idle HTTP connection
					// cut between requests would tell nothing).
					p.cut()
				}
				p.fire()
			}
		}
		if err != nil {
			return
		}
	}
}

// cut closes every connection through the proxy.
func (p *cutProxy) cut() {
	p.mu.Lock()
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	p.cuts.Add(1)
	for _, c := range conns {
		_ = c.Close()
	}
}

func (p *cutProxy) wasCut() bool { return p.cuts.Load() > 0 }

// block cuts the link and keeps it down (new connections are closed at
// once) until unblock.
func (p *cutProxy) block() {
	p.blocked.Store(true)
	p.cut()
}

func (p *cutProxy) unblock() { p.blocked.Store(false) }

// Bundles.

// matrixBundle is a bundle of version for platform with an app part of
// size bytes.
func matrixBundle(t *testing.T, version, platform string, size int) []byte {
	t.Helper()
	app := make([]byte, size)
	for i := range app {
		app[i] = byte(i*7 + len(version))
	}
	m := &bundle.Manifest{Name: "app", Platform: platform, Version: version, BuildID: "b" + version}
	var buf bytes.Buffer
	if err := bundle.Create(&buf, m, []bundle.PartData{bundle.BytesData("app", bundle.Part{Type: "app", Src: "app.bin"}, app)}, nil); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// duplicateSrcBundle is a bundle whose parts app and fs both name app.bin
// (issue 7 defect 6), written by hand: bundle.Create refuses it.
func duplicateSrcBundle(t *testing.T) []byte {
	t.Helper()
	app := bytes.Repeat([]byte("dup"), 1000)
	s1, s256 := sha1.Sum(app), sha256.Sum256(app)
	part := map[string]any{"src": "app.bin", "size": len(app), "cs_sha1": hex.EncodeToString(s1[:]), "cs_sha256": hex.EncodeToString(s256[:])}
	app1, fs := map[string]any{"type": "app"}, map[string]any{"type": "fs"}
	for k, v := range part {
		app1[k], fs[k] = v, v
	}
	man, err := json.MarshalIndent(map[string]any{"name": "app", "platform": "esp32", "version": "2.0.0", "build_id": "b2.0.0",
		"parts": map[string]any{"app": app1, "fs": fs}}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, e := range []struct {
		name string
		data []byte
	}{{bundle.ManifestName, man}, {"app.bin", app}} {
		w, err := zw.CreateRaw(&zip.FileHeader{Name: e.name, Method: zip.Store, CRC32: crc32.ChecksumIEEE(e.data),
			CompressedSize64: uint64(len(e.data)), UncompressedSize64: uint64(len(e.data))})
		if err == nil {
			_, err = w.Write(e.data)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Processes.

// emuProc is an `otactl emulator` process that can be killed (a power cut)
// and started again on the same flash and address.
type emuProc struct {
	t     *testing.T
	dir   string
	addr  string // host:port, fixed by the first start
	extra []string
	http  string // http://ADDR/rpc
	// listeners are the device's addresses by transport (the ready file).
	listeners map[string]string
	cmd       *exec.Cmd
	exited    chan struct{} // closed once cmd has exited
	log       *logWatch
}

func startMatrixEmu(t *testing.T, extra ...string) *emuProc {
	p := &emuProc{t: t, dir: filepath.Join(t.TempDir(), "flash"), addr: "127.0.0.1:0", extra: extra, log: &logWatch{}}
	t.Cleanup(p.kill)
	t.Cleanup(func() {
		if t.Failed() || testing.Verbose() {
			t.Logf("device log:\n%s", p.log.String())
		}
	})
	p.start()
	return p
}

// start powers the device on and waits until it is reachable.
func (p *emuProc) start() {
	t := p.t
	ready := filepath.Join(t.TempDir(), "ready.json")
	args := append([]string{"emulator", "--state-dir", p.dir, "--listen", p.addr, "--reboot-delay", "300ms", "--ready-file", ready}, p.extra...)
	cmd := exec.Command("otactl", args...)
	cmd.Env = matrixEnv()
	cmd.Stdout = p.log
	cmd.Stderr = p.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	p.cmd, p.exited = cmd, exited
	deadline := time.After(20 * time.Second)
	for {
		b, err := os.ReadFile(ready)
		if err == nil && len(b) > 0 {
			var r struct {
				Listeners []struct{ Transport, Addr string }
			}
			if err := json.Unmarshal(b, &r); err != nil {
				t.Fatalf("ready file: %v", err)
			}
			p.listeners = map[string]string{}
			for _, l := range r.Listeners {
				p.listeners[l.Transport] = l.Addr
				if l.Transport == "http" {
					p.http = l.Addr
					p.addr = strings.TrimSuffix(strings.TrimPrefix(l.Addr, "http://"), "/rpc")
				}
			}
			return
		}
		select {
		case <-exited:
			t.Fatalf("the emulator exited before it was ready:\n%s", p.log.String())
		case <-deadline:
			t.Fatalf("the emulator was not ready within 20s:\n%s", p.log.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// kill cuts the power: SIGKILL, no chance to clean up. The board's
// USB-UART adapter loses its power too, and the system removes its device
// node: the --serial-link symlink goes first, as udev removes an unplugged
// adapter's /dev/serial/by-id link. (Left behind, it would name a pts the
// kernel may give to another process's pty at once: otactl reconnecting
// through it would talk to another test's emulator.)
func (p *emuProc) kill() {
	if p.cmd == nil {
		return
	}
	for i, a := range p.extra {
		if a == "--serial-link" && i+1 < len(p.extra) {
			if fi, err := os.Lstat(p.extra[i+1]); err == nil && fi.Mode()&os.ModeSymlink != 0 {
				os.Remove(p.extra[i+1])
			}
		}
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// waitLog waits until the device log holds s.
func (p *emuProc) waitLog(t *testing.T, s string) bool {
	select {
	case <-p.log.mark(s):
		return true
	case <-time.After(30 * time.Second):
		t.Errorf("the device never logged %q", s)
		return false
	}
}

// logMark returns a channel closed once the device log holds s.
func (p *emuProc) logMark(s string) <-chan struct{} { return p.log.mark(s) }

// logWatch keeps a process's output and tells when a string shows up in it.
type logWatch struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	marks []logMark
}

type logMark struct {
	s    string
	from int
	ch   chan struct{}
}

func (w *logWatch) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(b)
	kept := w.marks[:0]
	for _, m := range w.marks {
		if bytes.Contains(w.buf.Bytes()[m.from:], []byte(m.s)) {
			close(m.ch)
			continue
		}
		kept = append(kept, m)
	}
	w.marks = kept
	return len(b), nil
}

// mark returns a channel closed once s is written after this call.
func (w *logWatch) mark(s string) <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	ch := make(chan struct{})
	w.marks = append(w.marks, logMark{s: s, from: w.buf.Len(), ch: ch})
	return ch
}

func (w *logWatch) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

type matrixResult struct {
	code           int
	stdout, stderr string
	took           time.Duration
}

// runMatrixOtactl runs the otactl binary, bounded by a minute: one that
// runs longer is a hang, and gets SIGQUIT so that its goroutines show in
// the failure.
func runMatrixOtactl(t *testing.T, args ...string) matrixResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "otactl", args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGQUIT) }
	cmd.WaitDelay = 10 * time.Second
	cmd.Env = matrixEnv()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	res := matrixResult{stdout: out.String(), stderr: errb.String(), took: time.Since(start)}
	if ctx.Err() != nil {
		t.Fatalf("otactl %s did not end within a minute:\n%s%s", strings.Join(args, " "), res.stdout, res.stderr)
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		res.code = ee.ExitCode()
	default:
		t.Fatalf("otactl %s: %v", strings.Join(args, " "), err)
	}
	return res
}

// matrixEnv is the environment of the processes the matrix starts: no
// colour, and no second of sleep at the exit of a -race binary.
func matrixEnv() []string {
	gorace := "atexit_sleep_ms=0"
	if v := os.Getenv("GORACE"); v != "" {
		gorace = v + " " + gorace
	}
	env := []string{"NO_COLOR=1", "GORACE=" + gorace}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GORACE=") && !strings.HasPrefix(kv, "OTACTL_") && !strings.HasPrefix(kv, "MOS_") {
			env = append(env, kv)
		}
	}
	return env
}

// dbgArgs adds -v to the faulty run when MATRIX_DEBUG is set: frames and
// events in the failure.
func dbgArgs() []string {
	if os.Getenv("MATRIX_DEBUG") != "" {
		return []string{"-v"}
	}
	return nil
}
