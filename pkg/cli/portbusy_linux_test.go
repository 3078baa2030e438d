//go:build linux

package cli

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/serial"
)

// A second otactl on a serial port in use fails at once with "port busy"
// and exit 5, naming the holder, instead of stealing its replies (issue 7,
// defect 8); once the holder closed the port, the command works.
func TestSerialPortBusyExit5(t *testing.T) {
	m, slave, err := serial.OpenPTY("")
	if err != nil {
		t.Skipf("no pty: %v", err)
	}
	s := rpc.NewServer("dev1")
	s.Handle("OTA.GetBootState", func(ctx context.Context, r *rpc.Request) (any, error) {
		return map[string]any{"active_slot": 0, "is_committed": true, "revert_slot": 0, "commit_timeout": 0}, nil
	})
	srv := serial.Serve(context.Background(), m, s, transport.Options{})
	t.Cleanup(func() { srv.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	holder, err := serial.Dial(ctx, &url.URL{Scheme: "serial", Path: slave}, transport.Options{})
	if err != nil {
		t.Fatalf("holder: %v", err)
	}
	r := run(t, nil, "--port", slave, "--timeout", "10s", "bootstate")
	want := fmt.Sprintf("port busy: another program has %s open (PID %d", slave, os.Getpid())
	if r.code != ExitUnreachable || !strings.Contains(r.stderr, want) {
		t.Fatalf("exit %d stderr %q; want exit %d saying %q", r.code, r.stderr, ExitUnreachable, want)
	}
	holder.Close()
	if r := run(t, nil, "--port", slave, "--timeout", "10s", "bootstate"); r.code != 0 {
		t.Fatalf("after the holder closed the port: exit %d stderr %q", r.code, r.stderr)
	}
}
