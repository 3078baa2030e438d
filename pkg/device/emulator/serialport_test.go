//go:build linux

package emulator

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The emulated serial port is the board's USB-UART adapter: it stays, at
// the same pts and behind the same symlink, while the device reboots or
// loses its power, and a client that keeps it open gets answers from the
// rebooted device, after its boot output. What the host sends while the device is off is dropped,
// not answered after the boot. Close removes the port.
func TestSerialPortStaysAcrossReboots(t *testing.T) {
	link := filepath.Join(t.TempDir(), "tty")
	e := newEnv(t, func(c *Config) {
		c.SerialLink = link
		c.RebootDelay = time.Second // on the ManualClock: off until the test advances it
	})
	pts := func(when string) string {
		t.Helper()
		p, err := os.Readlink(link)
		if err != nil {
			t.Fatalf("%s: the serial link: %v", when, err)
		}
		return p
	}
	first := pts("at boot")
	lines := make(chan string, 1024)
	c := dialSerial(t, link, lines)
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if _, err := c.Call(ctx, "Sys.GetInfo", nil); err != nil {
		t.Fatalf("Sys.GetInfo before the reboot: %v", err)
	}

	e.d.Reboot()
	e.waitUntil("the device is off, rebooting", func(s State) bool { return !s.Online && !s.OffUntil.IsZero() })
	if p := pts("while off"); p != first {
		t.Fatalf("while the device is off the link names %s, was %s", p, first)
	}
	// Sent while the device is off: dropped.
	offCtx, offCancel := context.WithCancel(ctx)
	offDone := make(chan error, 1)
	go func() {
		_, err := c.Call(offCtx, "Sys.GetInfo", nil)
		offDone <- err
	}()
	// The request is on the wire once the device's end has it: wait until
	// the pty holds nothing unread by the emulator (bounded by waitLimit).
	waitFlushed(t, e)

	e.waitBoots(2)
	// The boot output goes out on the port, as a firmware prints it on its
	// UART: a client that kept the port open sees it.
	waitLine(t, lines, `\] booted slot=0 version=`)
	if p := pts("after the reboot"); p != first {
		t.Fatalf("after the reboot the link names %s, was %s", p, first)
	}
	if _, err := c.Call(ctx, "Sys.GetInfo", nil); err != nil {
		t.Fatalf("Sys.GetInfo over the port kept open across the reboot: %v", err)
	}
	select {
	case err := <-offDone:
		t.Fatalf("the request sent while the device was off was answered after its boot (%v)", err)
	default:
	}
	offCancel()
	if err := <-offDone; !errors.Is(err, context.Canceled) {
		t.Fatalf("request sent while off: %v, want no answer", err)
	}

	e.d.PowerCut()
	<-e.d.Done()
	if p := pts("after a power cut"); p != first {
		t.Fatalf("after a power cut the link names %s, was %s", p, first)
	}
	if err := e.d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(link); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the serial link after Close: %v, want it removed", err)
	}
}

// waitFlushed waits until the device's serial port has dropped what the
// host sent while the device was off.
func waitFlushed(t *testing.T, e *env) {
	t.Helper()
	var l *SerialListener
	for _, x := range e.d.listeners {
		if sl, ok := x.(*SerialListener); ok {
			l = sl
		}
	}
	l.mu.Lock()
	p := l.port
	l.mu.Unlock()
	deadline := time.Now().Add(waitLimit)
	for p.dropped.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the request sent while the device was off never reached its port")
		}
		time.Sleep(time.Millisecond)
	}
}
