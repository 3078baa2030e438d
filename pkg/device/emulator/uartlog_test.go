package emulator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/serial"
)

// dialSerial connects a client to the device's serial link, handing the
// device log lines it sees to lines.
func dialSerial(t *testing.T, link string, lines chan<- string) *rpc.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	u, err := transport.ParsePort(link)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := serial.Dial(ctx, u, transport.Options{DeviceLog: func(l string) {
		select {
		case lines <- l:
		default:
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	c := rpc.NewClient(conn, rpc.ClientOptions{})
	t.Cleanup(func() { c.Close() })
	return c
}

// waitLine returns the first line from lines that matches re.
func waitLine(t *testing.T, lines <-chan string, re string) string {
	t.Helper()
	rx := regexp.MustCompile(re)
	timer := time.NewTimer(waitLimit)
	defer timer.Stop()
	var seen []string
	for {
		select {
		case l := <-lines:
			if rx.MatchString(l) {
				return l
			}
			seen = append(seen, l)
		case <-timer.C:
			t.Fatalf("no device log line matching %q on the serial link; saw %q", re, seen)
		}
	}
}

// The device log goes out on the serial link between frames, as a
// firmware's does on its UART, and calls still work around it.
func TestSerialLinkCarriesDeviceLog(t *testing.T) {
	link := filepath.Join(t.TempDir(), "tty")
	e := newEnv(t, func(c *Config) { c.SerialLink = link })
	lines := make(chan string, 1024)
	c := dialSerial(t, link, lines)
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	_, err := c.Call(ctx, "OTA.Update", map[string]any{"url": e.srv.URL + "/missing.zip"})
	var re *rpc.Error
	if !errors.As(err, &re) || re.Code == 0 {
		t.Fatalf("OTA.Update of a missing bundle: %v, want an RPC error", err)
	}
	// The lines logged before the reply came before it on the link: they
	// are all in by the time the call returned.
	var before []string
	for len(lines) > 0 {
		before = append(before, <-lines)
	}
	want := []string{
		`^\[[A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d\.\d{3}\] starting, timeout 600$`,
		`^\[.*\] downloading url=http://127\.0\.0\.1:\d+/missing\.zip$`,
		`^\[.*\] update failed err=`,
	}
	if len(before) != len(want) {
		t.Fatalf("device log lines before the reply: %q, want %d lines", before, len(want))
	}
	for i, re := range want {
		if !regexp.MustCompile(re).MatchString(before[i]) {
			t.Errorf("line %d = %q, want %s", i, before[i], re)
		}
		if strings.Contains(before[i], "device=") {
			t.Errorf("log line %q names the device: a firmware's UART log does not", before[i])
		}
	}
	if _, err := c.Call(ctx, "Sys.GetInfo", nil); err != nil {
		t.Fatalf("Sys.GetInfo after the log lines: %v", err)
	}
}

// Nobody reads the link: logging never blocks the device (lines beyond
// what the queue and the pty hold are dropped), and a client that opens
// the port later talks to it as usual.
func TestSerialLogNeverBlocks(t *testing.T) {
	link := filepath.Join(t.TempDir(), "tty")
	e := newEnv(t, func(c *Config) { c.SerialLink = link })
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 20000 {
			e.d.log.Info(fmt.Sprintf("line %d %s", i, strings.Repeat("x", 60)))
		}
	}()
	timer := time.NewTimer(waitLimit)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		t.Fatal("logging 20000 lines with nobody reading the serial link blocked the device")
	}
	lines := make(chan string, 1024)
	c := dialSerial(t, link, lines)
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if _, err := c.Call(ctx, "Sys.GetInfo", nil); err != nil {
		t.Fatalf("Sys.GetInfo: %v", err)
	}
	e.d.log.Info("after the flood")
	waitLine(t, lines, `\] after the flood$`)
}

func TestUARTLineOneLine(t *testing.T) {
	r := slogRecord("first\nsecond", "err", "a\r\nb")
	got := formatUARTLine(r, nil)
	if strings.ContainsAny(got, "\r\n") || !strings.HasSuffix(got, `] first\nsecond err=a\r\nb`) {
		t.Errorf("uartLine = %q", got)
	}
}

func slogRecord(msg string, args ...any) slog.Record {
	r := slog.NewRecord(time.Date(2024, 12, 1, 3, 52, 25, 123e6, time.UTC), slog.LevelInfo, msg, 0)
	r.Add(args...)
	return r
}
