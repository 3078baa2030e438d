package mochisafe_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/transport/mqtt/mqtttest"
)

// connectPacket is an MQTT 3.1.1 CONNECT with a clean session, a keepalive
// of 60 s and the client id id.
func connectPacket(id string) []byte {
	body := []byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, byte(len(id) >> 8), byte(len(id))}
	body = append(body, id...)
	return append([]byte{0x10, byte(len(body))}, body...)
}

// connect dials addr, sends a CONNECT and reads the broker's first bytes
// (its CONNACK), all before ctx's deadline. It returns the connection on a
// CONNACK, or the error that ended the attempt.
func connect(ctx context.Context, addr, id string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if _, err := c.Write(connectPacket(id)); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("write CONNECT: %w", err)
	}
	var ack [4]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("read CONNACK: %w", err)
	}
	if ack[0] != 0x20 || ack[3] != 0 {
		_ = c.Close()
		return nil, fmt.Errorf("CONNACK % x: refused", ack)
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// endedByBroker reports whether err is how a stopped broker ends a
// connection: refused, reset, closed (EOF) or broken.
func endedByBroker(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// A broker restarted while clients keep dialling it must never leave one
// of them hanging: every connection accepted while the broker stops is
// closed (or refused), so each dial ends with a CONNACK (from the old
// broker or the new one) or with the connection refused or closed, never
// by its own deadline. mochi v2.7.9's TCP listener disconnected its
// clients before closing its listening socket, and a connection accepted
// in between was neither served nor closed.
func TestRestartLeavesNoDialHanging(t *testing.T) {
	const (
		restarts = 60
		idle     = 30 // clients connected at each stop: they make the stop take a while
		dialers  = 4
		maxDials = 20000 // per dialer, a bound on the loop
		// A dial that lasts this long was left hanging: a broker on
		// loopback answers, refuses or closes in well under a second.
		dialDeadline = 3 * time.Second
	)
	b := mqtttest.Start(t, mqtttest.Config{})
	addr := b.Addr

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var hung []error
	outcomes := map[string]int{}
	for d := range dialers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < maxDials; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), dialDeadline)
				c, err := connect(ctx, addr, fmt.Sprintf("dialer-%d-%d", d, i))
				cancel()
				mu.Lock()
				switch {
				case err == nil:
					outcomes["connack"]++
					_ = c.Close()
				case endedByBroker(err):
					outcomes["refused/closed"]++
				default:
					hung = append(hung, err)
				}
				mu.Unlock()
			}
		}()
	}

	for r := range restarts {
		var conns []net.Conn
		for i := range idle {
			ctx, cancel := context.WithTimeout(context.Background(), dialDeadline)
			c, err := connect(ctx, addr, fmt.Sprintf("idle-%d-%d", r, i))
			cancel()
			if err != nil {
				t.Fatalf("restart %d: idle client %d: %v", r, i, err)
			}
			conns = append(conns, c)
		}
		b.Close()
		for _, c := range conns {
			_ = c.Close()
		}
		b = mqtttest.Start(t, mqtttest.Config{Addr: addr})
	}
	close(stop)
	wg.Wait()

	t.Logf("dial outcomes over %d restarts: %v", restarts, outcomes)
	for _, err := range hung {
		t.Errorf("a dial during a restart neither connected nor was refused or closed: %v", err)
	}
	if outcomes["refused/closed"] == 0 {
		t.Errorf("no dial met a stopped broker in %d restarts: the test did not exercise a restart", restarts)
	}
}

// Stopping a broker ends every connection it accepted, also those that are
// not clients yet (no CONNECT, or half of one): they see their connection
// closed at once, and the broker's Close returns. With mochi v2.7.9's
// listener such a connection was not closed, and Close waited for it.
func TestCloseEndsConnectionsThatAreNotClientsYet(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dl, _ := ctx.Deadline()

	var d net.Dialer
	silent, err := d.DialContext(ctx, "tcp", b.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	half, err := d.DialContext(ctx, "tcp", b.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer half.Close()
	if _, err := half.Write(connectPacket("half")[:5]); err != nil {
		t.Fatal(err)
	}
	// The broker accepts in order: once this one has its CONNACK, the two
	// above have been accepted too.
	client, err := connect(ctx, b.Addr, "client")
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	closed := make(chan struct{})
	go func() {
		b.Close()
		close(closed)
	}()
	for name, c := range map[string]net.Conn{"silent connection": silent, "half a CONNECT": half, "connected client": client} {
		_ = c.SetReadDeadline(dl)
		_, err := io.Copy(io.Discard, c) // a DISCONNECT may come first
		if err != nil && !endedByBroker(err) {
			t.Errorf("%s: after the broker stopped: %v, want the connection closed", name, err)
		}
	}
	// Unblock a Close that waits for these connections before failing.
	for _, c := range []net.Conn{silent, half, client} {
		_ = c.Close()
	}
	wait := time.NewTimer(10 * time.Second)
	defer wait.Stop()
	select {
	case <-closed:
	case <-wait.C:
		t.Fatal("the broker's Close did not return")
	}
}
