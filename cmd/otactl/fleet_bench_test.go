package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Issue 8, benchmarks 2 to 5: a fleet rollout through a real mosquitto.
const (
	fleetBenchDevices  = 1000
	fleetBenchSmall    = 100
	fleetBenchParallel = 200
	// Sequential `otactl update` runs take seconds each (mostly waiting for
	// the device to come back after its reboot): the benchmark times
	// fleetBenchSeqSample of them and scales to fleetBenchSmall.
	fleetBenchSeqSample = 10
	fleetBenchBootOnes  = 5

	goalScaling     = 3   // 1,000 devices ÷ 100
	goalParallelism = 0.1 // fleet of 100 ÷ 100 sequential updates
	goalBootState   = 200 // fleet bootstate of 1,000 ÷ bootstate of one
	goalConnections = 1   // broker connections held by one fleet update
)

// BenchmarkFleet measures, side by side in one run, against one `otactl
// emulator --count 1000` on the mosquitto of OTACTL_TEST_MOSQUITTO, with a
// 64 KiB bundle served with --file, --parallel 200, --commit:
//   - figure 2: the wall time of `fleet update` of 1,000 devices ÷ the same
//     of 100 (goal ≤ 3);
//   - figure 3: `fleet update` of 100 devices ÷ 100 sequential `otactl
//     update` runs (timed on 10 runs, scaled to 100; goal ≤ 0.1);
//   - figure 4: `fleet bootstate` of 1,000 devices ÷ one `otactl bootstate`
//     (median of 5), whole processes (goal ≤ 200);
//   - figure 5: the most MQTT connections to the broker the otactl process
//     held at once during the 1,000-device update (goal 1), and how many it
//     opened in all.
//
// Run it with:
//
//	scripts/with-mosquitto.sh go test -run='^$' -bench=Fleet -benchtime=1x ./cmd/otactl/
//
// Each figure is printed next to its goal and reported as a metric.
func BenchmarkFleet(b *testing.B) {
	if runtime.GOOS != "linux" {
		b.Skip("reads /proc")
	}
	m := os.Getenv("OTACTL_TEST_MOSQUITTO")
	if m == "" {
		b.Skip("OTACTL_TEST_MOSQUITTO not set: run under scripts/with-mosquitto.sh (make bench does)")
	}
	_, brokerPort, _ := strings.Cut(m, ":")
	bin := buildOtactl(b)
	dir := b.TempDir()
	em := startFleetEmulatorBin(b, bin, "mqtt://"+m, "fbench-", fleetBenchDevices)
	lines := readLines(b, em.inventory)
	inv100 := filepath.Join(dir, "devices-100.txt")
	writeLines(b, inv100, lines[:fleetBenchSmall])
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		v := 2 + 3*i
		fw100 := fleetBundle(b, dir, fmt.Sprintf("%d.0.0", v))
		fw1000 := fleetBundle(b, dir, fmt.Sprintf("%d.0.0", v+1))
		fwSeq := fleetBundle(b, dir, fmt.Sprintf("%d.0.0", v+2))

		t100, _ := timeFleetUpdate(b, bin, fw100, inv100, brokerPort)
		t1000, conns := timeFleetUpdate(b, bin, fw1000, em.inventory, brokerPort)

		// 10 sequential updates of devices the rollouts updated too.
		seqStart := time.Now()
		for _, addr := range lines[:fleetBenchSeqSample] {
			out, err := exec.Command(bin, "--port", addr, "update", "--file", fwSeq, "--commit").CombinedOutput()
			if err != nil {
				b.Fatalf("otactl update %s: %v\n%s", addr, err, out)
			}
		}
		seq := time.Since(seqStart) * fleetBenchSmall / fleetBenchSeqSample

		bsStart := time.Now()
		if out, err := exec.Command(bin, "fleet", "bootstate", "--devices", em.inventory, "--json").Output(); err != nil {
			b.Fatalf("fleet bootstate: %v\n%s", err, out)
		}
		bs1000 := time.Since(bsStart)
		var ones []time.Duration
		for k := 0; k < fleetBenchBootOnes; k++ {
			s := time.Now()
			if out, err := exec.Command(bin, "--port", lines[k], "bootstate").CombinedOutput(); err != nil {
				b.Fatalf("bootstate: %v\n%s", err, out)
			}
			ones = append(ones, time.Since(s))
		}
		sort.Slice(ones, func(i, j int) bool { return ones[i] < ones[j] })
		bs1 := ones[len(ones)/2]

		scaling := t1000.Seconds() / t100.Seconds()
		par := t100.Seconds() / seq.Seconds()
		bsr := bs1000.Seconds() / bs1.Seconds()
		b.ReportMetric(scaling, "scaling-1000/100")
		b.ReportMetric(par, "fleet/sequential")
		b.ReportMetric(bsr, "bootstate-1000/1")
		b.ReportMetric(float64(conns.peak), "broker-conns")
		b.ReportMetric(float64(conns.opened), "broker-conns-opened")
		b.ReportMetric(t1000.Seconds(), "s-fleet-1000")
		b.ReportMetric(t100.Seconds(), "s-fleet-100")
		b.ReportMetric(conns.hwmKiB/1024, "MiB-otactl-peak-1000")
		load := loadAvg()
		fmt.Printf("fleet benchmark (mosquitto %s, %d devices in one emulator, --parallel %d, 64 KiB bundle, --commit; load average %s on %d CPUs):\n", m, fleetBenchDevices, fleetBenchParallel, load, runtime.NumCPU())
		fmt.Printf("issue 8 figure 2: fleet update 1000 ÷ 100:        %6.1fs ÷ %5.1fs = %6.2f   goal ≤ %v  %s\n", t1000.Seconds(), t100.Seconds(), scaling, goalScaling, verdict(scaling <= goalScaling))
		fmt.Printf("issue 8 figure 3: fleet update 100 ÷ 100 updates: %6.1fs ÷ %5.0fs = %6.3f   goal ≤ %v  %s (sequential: %d runs timed, scaled to %d)\n", t100.Seconds(), seq.Seconds(), par, goalParallelism, verdict(par <= goalParallelism), fleetBenchSeqSample, fleetBenchSmall)
		fmt.Printf("issue 8 figure 4: fleet bootstate 1000 ÷ one:     %6.2fs ÷ %5.2fs = %6.1f   goal ≤ %v  %s\n", bs1000.Seconds(), bs1.Seconds(), bsr, goalBootState, verdict(bsr <= goalBootState))
		fmt.Printf("issue 8 figure 5: broker connections held at once by fleet update of 1000: %d (opened in all: %d)   goal %v  %s\n", conns.peak, conns.opened, goalConnections, verdict(conns.peak <= goalConnections))
		fmt.Printf("     otactl peak memory during the 1000-device update: %.1f MiB; CPU time %.1fs\n", conns.hwmKiB/1024, conns.cpu.Seconds())
	}
}

// loadAvg is the 1-minute load average, for the figures' context.
func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT MET"
}

// connStats is what connection sampling saw of one otactl process.
type connStats struct {
	peak, opened int
	hwmKiB       float64
	cpu          time.Duration
}

// timeFleetUpdate runs `fleet update --commit` of the inventory and returns
// its wall time and the broker connections its process held.
func timeFleetUpdate(b *testing.B, bin, fw, inventory, brokerPort string) (time.Duration, connStats) {
	b.Helper()
	var out bytes.Buffer
	cmd := exec.Command(bin, "fleet", "update", "--file", fw, "--devices", inventory, "--commit",
		"--parallel", strconv.Itoa(fleetBenchParallel), "--json")
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	var st connStats
	seen := map[string]bool{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			held := brokerSockets(cmd.Process.Pid, brokerPort)
			st.peak = max(st.peak, len(held))
			for _, ino := range held {
				seen[ino] = true
			}
			if s, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid)); err == nil {
				if v, ok := lookupStatusKiB(s, "VmHWM:"); ok { // none once it exited
					st.hwmKiB = max(st.hwmKiB, v)
				}
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	err := cmd.Wait()
	d := time.Since(start)
	close(stop)
	wg.Wait()
	st.opened = len(seen)
	if ps := cmd.ProcessState; ps != nil {
		st.cpu = ps.UserTime() + ps.SystemTime()
	}
	if err != nil {
		b.Fatalf("fleet update: %v\n%s", err, tail(out.String(), 4000))
	}
	return d, st
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// brokerSockets lists the inodes of the TCP sockets pid holds that are
// connected to the broker's port on loopback.
func brokerSockets(pid int, port string) []string {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return nil
	}
	mine := map[string]bool{}
	for _, e := range ents {
		l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		if ino, ok := strings.CutPrefix(l, "socket:["); ok {
			mine[strings.TrimSuffix(ino, "]")] = true
		}
	}
	p, _ := strconv.Atoi(port)
	remote := fmt.Sprintf(":%04X", p)
	var out []string
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, filepath.Base(f)))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			fl := strings.Fields(sc.Text())
			// sl local rem st tx:rx tr:when retrnsmt uid timeout inode
			if len(fl) < 10 || !strings.HasSuffix(fl[2], remote) || fl[3] != "01" { // 01: ESTABLISHED
				continue
			}
			if mine[fl[9]] {
				out = append(out, fl[9])
			}
		}
	}
	return out
}

// startFleetEmulatorBin is startFleetEmulator with a binary of its own.
func startFleetEmulatorBin(b *testing.B, bin, broker, prefix string, count int) *fleetEmulator {
	b.Helper()
	dir := b.TempDir()
	ready := filepath.Join(dir, "ready.json")
	e := &fleetEmulator{log: &bytes.Buffer{}, inventory: filepath.Join(dir, "devices.txt")}
	e.cmd = exec.Command(bin, "emulator", "--count", strconv.Itoa(count), "--id-prefix", prefix,
		"--state-dir", filepath.Join(dir, "flash"), "--mqtt-broker", broker,
		"--ready-file", ready, "--inventory-file", e.inventory, "--quiet")
	e.cmd.Stdout, e.cmd.Stderr = e.log, e.log
	if err := e.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = e.cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { e.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(time.Minute):
			e.cmd.Process.Kill()
			<-done
		}
	})
	deadline := time.Now().Add(3 * time.Minute)
	for {
		if _, err := os.Stat(ready); err == nil {
			return e
		}
		if time.Now().After(deadline) {
			b.Fatalf("emulator not ready:\n%s", e.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func readLines(b testing.TB, path string) []string {
	b.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

func writeLines(b testing.TB, path string, lines []string) {
	b.Helper()
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		b.Fatal(err)
	}
}
