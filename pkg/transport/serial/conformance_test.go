//go:build linux

package serial

import (
	"context"
	"net/url"
	"testing"

	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/transporttest"
)

// startPTY serves h on the master end of a real pty; clients open the slave
// with go.bug.st/serial through Dial.
func startPTY(t *testing.T, h transport.Handler) *transporttest.Device {
	t.Helper()
	master, slave, err := OpenPTY("")
	if err != nil {
		t.Fatalf("OpenPTY: %v", err)
	}
	srv := Serve(context.Background(), master, h, transport.Options{})
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("server close: %v", err)
		}
	})
	return &transporttest.Device{
		Dial: func(ctx context.Context, opts transport.Options) (transport.Conn, error) {
			return Dial(ctx, &url.URL{Scheme: "serial", Path: slave}, opts)
		},
		Log: srv.Log,
	}
}

func TestConformance(t *testing.T) {
	transporttest.Run(t, startPTY)
}
