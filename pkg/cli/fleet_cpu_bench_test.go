package cli

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/device/emulator"
	"github.com/otactl/otactl/pkg/ota/bundle"
	"github.com/otactl/otactl/pkg/transport/mqtt/mqtttest"
)

// fleetCPUDevices is how many devices BenchmarkFleetUpdateCPU updates per
// op; OTACTL_BENCH_DEVICES overrides it.
const fleetCPUDevices = 100

// BenchmarkFleetUpdateCPU measures the CPU one emulated device's update
// costs in all (the emulated device, otactl's fleet path and, with the
// in-process broker, the broker), which is what bounds issue 8's figure 2
// on a small machine (docs/benchmarks.md, "Fleet rollouts: issue 8, figures 1 to 5"). Each
// op is one `fleet update --file --commit --parallel 200` (64 KiB bundle)
// of fleetCPUDevices devices of one emulator.Host in this process, run
// in-process through Main; the metric cpu-ms/update is this process's user
// and system CPU for the op divided by the devices. Through the real
// mosquitto of scripts/with-mosquitto.sh when OTACTL_TEST_MOSQUITTO is set
// (its CPU is then not counted), else an in-process mochi broker. Side by
// side: flash=sync fsyncs every flash write (emulator --flash-sync, what
// every update did before it was an option), flash=default does not:
//
//	scripts/with-mosquitto.sh go test -run='^$' -bench=FleetUpdateCPU -benchtime=3x ./pkg/cli/
//	go test -run='^$' -bench=FleetUpdateCPU -benchtime=3x -cpuprofile cpu.out ./pkg/cli/
func BenchmarkFleetUpdateCPU(b *testing.B) {
	for _, sync := range []bool{true, false} {
		name := "flash=default"
		if sync {
			name = "flash=sync"
		}
		b.Run(name, func(b *testing.B) { benchFleetUpdateCPU(b, sync) })
	}
}

func benchFleetUpdateCPU(b *testing.B, flashSync bool) {
	n := fleetCPUDevices
	if s := os.Getenv("OTACTL_BENCH_DEVICES"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			b.Fatalf("OTACTL_BENCH_DEVICES=%q: want a count of devices", s)
		}
		n = v
	}
	broker, where := os.Getenv(mqtttest.MosquittoEnv), "mosquitto"
	if broker != "" {
		broker = "mqtt://" + broker
	} else {
		broker, where = mqtttest.Start(b, mqtttest.Config{}).URL, "mochi in-process"
	}
	h, err := emulator.NewHost(context.Background(), emulator.HostConfig{MQTTBroker: broker})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { h.Close() })
	dir := b.TempDir()
	// Ids unique to this run, so that a shared mosquitto holds no other
	// run's devices under them.
	prefix := fmt.Sprintf("cpu%d-", time.Now().UnixNano()%1e9)
	cfgs := make([]emulator.Config, n)
	ids := make([]string, n)
	for i := range cfgs {
		ids[i] = fmt.Sprintf("%s%04d", prefix, i+1)
		cfgs[i] = emulator.Config{ID: ids[i], StateDir: filepath.Join(dir, "flash", ids[i]), FlashSync: flashSync}
	}
	if _, err := h.AddDevices(context.Background(), cfgs); err != nil {
		b.Fatal(err)
	}
	idsFile := filepath.Join(dir, "ids.txt")
	if err := os.WriteFile(idsFile, []byte(strings.Join(ids, "\n")+"\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	var cpu, wall time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		fw := cpuBenchBundle(b, dir, fmt.Sprintf("%d.0.0", i+2))
		b.StartTimer()
		c0, t0 := processCPU(b), time.Now()
		var out, errOut strings.Builder
		code := Main([]string{"fleet", "update", "--file", fw, "--broker", broker, "--ids", idsFile,
			"--commit", "--parallel", "200", "--json"},
			&IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}, func(string) string { return "" })
		cpu += processCPU(b) - c0
		wall += time.Since(t0)
		if code != 0 {
			b.Fatalf("fleet update: exit %d\n%s\n%s", code, errOut.String(), out.String())
		}
	}
	b.ReportMetric(float64(cpu.Microseconds())/1000/float64(n*b.N), "cpu-ms/update")
	b.ReportMetric(wall.Seconds()/float64(b.N), "s/rollout")
	b.Logf("%d devices through %s: %.2f ms of CPU an update", n, where, float64(cpu.Microseconds())/1000/float64(n*b.N))
}

// processCPU is the user and system CPU this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuBenchBundle is the 64 KiB bundle of issue 8's figure 2.
func cpuBenchBundle(b *testing.B, dir, version string) string {
	path := filepath.Join(dir, "fw-"+version+".zip")
	app := make([]byte, 64<<10)
	_, _ = rand.Read(app)
	m := &bundle.Manifest{Name: "fleet-app", Platform: "esp32", Version: version, BuildID: "fleet-" + version}
	parts := []bundle.PartData{bundle.BytesData("app", bundle.Part{Type: "app", Src: "app.bin", Addr: bundle.Int64(0x10000)}, app)}
	if err := bundle.CreateFile(path, m, parts, nil); err != nil {
		b.Fatal(err)
	}
	return path
}
