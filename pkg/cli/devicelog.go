package cli

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/otactl/otactl/pkg/transport"
)

// deviceLogFile is the file of --device-log: the device's log lines that
// the connections of one update or push see, one a line, each after the
// time otactl received it (UTC), so that a CI job can keep them as an
// artifact (docs/commands.md, "--device-log").
type deviceLogFile struct {
	mu     sync.Mutex
	f      *os.File
	closed bool
	err    error // the first write error
}

// deviceLogTime is the time format of --device-log lines.
const deviceLogTime = "2006-01-02T15:04:05.000Z07:00"

// line writes one line. It is called from the connections' reader
// goroutines; lines after close are dropped.
func (d *deviceLogFile) line(s string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed || d.err != nil {
		return
	}
	// Written at once, unbuffered: a job killed mid-update keeps what was
	// seen until then.
	_, d.err = fmt.Fprintf(d.f, "%s %s\n", time.Now().UTC().Format(deviceLogTime), s)
}

func (d *deviceLogFile) close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	err := d.f.Close()
	if d.err != nil {
		return d.err
	}
	return err
}

// addDeviceLogFlag gives cmd (update, push) the --device-log flag: its
// RunE then runs with the device's log lines saved to the file.
func addDeviceLogFlag(f *Factory, cmd *cobra.Command) {
	var path string
	cmd.Flags().StringVar(&path, "device-log", "", "save the device's log lines seen during the update to FILE (over a serial port: the lines between frames; other links carry none), for a CI artifact")
	run := cmd.RunE
	cmd.RunE = func(c *cobra.Command, args []string) error {
		if path == "" {
			return run(c, args)
		}
		fh, err := os.Create(path)
		if err != nil {
			return usageErrorf("--device-log: cannot create %s: %v", path, err)
		}
		lf := &deviceLogFile{f: fh}
		fmt.Fprintf(fh, "# otactl %s: device log of %s, from %s\n", c.Name(), transport.RedactString(f.G.Port), time.Now().UTC().Format(deviceLogTime))
		if why := noDeviceLog(f.G.Port); why != "" {
			fmt.Fprintf(fh, "# %s\n", why)
		}
		f.deviceLog = lf.line
		err = run(c, args)
		f.deviceLog = nil
		if cerr := lf.close(); cerr != nil {
			f.note("warning: --device-log %s: %v", path, cerr)
		}
		return err
	}
}

// noDeviceLog says why a port carries no device log, or "" for a serial
// port (whose link carries the log between frames).
func noDeviceLog(port string) string {
	u, err := transport.ParsePort(port)
	if err != nil || u.Scheme == "serial" {
		return ""
	}
	return fmt.Sprintf("%s carries RPC frames only, no device log: connect the device's serial port (or read its log where it sends it) to see it", strings.ToUpper(u.Scheme))
}
