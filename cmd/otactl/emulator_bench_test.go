package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Issue 8, benchmark 1: the memory of an emulated fleet.
const (
	benchFleet     = 1000 // devices in one emulator process
	benchGoalKiB   = 256  // peak RSS a device, at most
	benchIdle      = 2 * time.Second
	benchReadyWait = 3 * time.Minute
)

// BenchmarkEmulatorMemory starts the real binary as `otactl emulator
// --count 1000` on MQTT (the embedded broker, and the mosquitto named by
// OTACTL_TEST_MOSQUITTO when set, as under `make bench`), waits for its
// ready file to say every device is connected to the broker, lets it idle,
// and reports its peak RSS (VmHWM of /proc/PID/status) divided by the
// number of devices, next to the goal of 256 KiB:
//
//	scripts/with-mosquitto.sh go test -run='^$' -bench=EmulatorMemory ./cmd/otactl/
//
// With the embedded broker the figure includes the broker's side of the
// thousand connections; with mosquitto it is the devices alone.
func BenchmarkEmulatorMemory(b *testing.B) {
	if runtime.GOOS != "linux" {
		b.Skip("reads /proc/PID/status")
	}
	bin := buildOtactl(b)
	brokers := []struct{ name, spec string }{{"broker=embedded", "embedded:127.0.0.1:0"}}
	if m := os.Getenv("OTACTL_TEST_MOSQUITTO"); m != "" {
		brokers = append(brokers, struct{ name, spec string }{"broker=mosquitto", "mqtt://" + m})
	} else {
		b.Log("OTACTL_TEST_MOSQUITTO not set: the embedded broker only (run under scripts/with-mosquitto.sh for mosquitto too)")
	}
	for _, br := range brokers {
		b.Run(br.name, func(b *testing.B) {
			var hwm, rss, start float64
			for i := 0; i < b.N; i++ {
				m := measureFleet(b, bin, br.spec, filepath.Join(b.TempDir(), strconv.Itoa(i)))
				hwm += m.hwmKiB
				rss += m.rssKiB
				start += m.ready.Seconds()
			}
			n := float64(b.N)
			b.ReportMetric(hwm/n/benchFleet, "peak-KiB/device")
			b.ReportMetric(benchGoalKiB, "goal-KiB/device")
			b.ReportMetric(hwm/n/benchFleet/benchGoalKiB, "of-goal")
			b.ReportMetric(rss/n/benchFleet, "idle-KiB/device")
			b.ReportMetric(start/n, "s-to-ready")
			perDevice := hwm / n / benchFleet
			fmt.Printf("issue 8 figure 1: emulator --count %d idle on MQTT (%s): peak RSS %.1f KiB a device   goal ≤ %d KiB  %s (load average %s)\n",
				benchFleet, strings.TrimPrefix(br.name, "broker="), perDevice, benchGoalKiB, verdict(perDevice <= benchGoalKiB), loadAvg())
		})
	}
}

type fleetMemory struct {
	hwmKiB, rssKiB float64
	ready          time.Duration
}

// measureFleet runs one emulator of benchFleet devices until it is ready
// and has idled, and reads its memory.
func measureFleet(b *testing.B, bin, broker, dir string) fleetMemory {
	b.Helper()
	ready := filepath.Join(dir, "ready.json")
	var out bytes.Buffer
	cmd := exec.Command(bin, "emulator", "--count", strconv.Itoa(benchFleet), "--id-prefix", "membench-",
		"--state-dir", filepath.Join(dir, "flash"), "--mqtt-broker", broker, "--ready-file", ready, "--quiet")
	cmd.Stdout, cmd.Stderr = &out, &out
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGINT)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(time.Minute):
			cmd.Process.Kill()
			<-done
		}
	}()
	deadline := t0.Add(benchReadyWait)
	var r struct {
		Count         int `json:"count"`
		MQTTConnected int `json:"mqtt_connected"`
	}
	for {
		if data, err := os.ReadFile(ready); err == nil {
			if err := json.Unmarshal(data, &r); err != nil {
				b.Fatalf("ready file: %v", err)
			}
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d devices not ready after %v:\n%s", benchFleet, benchReadyWait, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	m := fleetMemory{ready: time.Since(t0)}
	if r.Count != benchFleet || r.MQTTConnected != benchFleet {
		b.Fatalf("ready file: %d devices, %d connected to the broker; want %d", r.Count, r.MQTTConnected, benchFleet)
	}
	time.Sleep(benchIdle) // idle: nothing should grow
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	m.hwmKiB, m.rssKiB = statusKiB(b, status, "VmHWM:"), statusKiB(b, status, "VmRSS:")
	return m
}

// statusKiB reads a "Key:   N kB" line of /proc/PID/status.
func statusKiB(b *testing.B, status []byte, key string) float64 {
	v, ok := lookupStatusKiB(status, key)
	if !ok {
		b.Fatalf("no %s in /proc/PID/status", key)
	}
	return v
}

// lookupStatusKiB reads a "Key:   N kB" line of /proc/PID/status; a
// process that has exited (a zombie) has none.
func lookupStatusKiB(status []byte, key string) (float64, bool) {
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[0] == key && f[2] == "kB" {
			v, err := strconv.ParseFloat(f[1], 64)
			return v, err == nil
		}
	}
	return 0, false
}

// buildOtactl builds the real binary (not this test binary) into a
// temporary directory.
func buildOtactl(b *testing.B) string {
	b.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(b.TempDir(), "otactl")
	cmd := exec.Command(goBin, "build", "-trimpath", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}
