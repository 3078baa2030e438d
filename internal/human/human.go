// Package human formats durations and sizes for people, the same way in
// every message otactl prints (the CLI's output and the sentences of
// pkg/ota's reports).
package human

import (
	"fmt"
	"strings"
	"time"
)

// Duration prints 4m52s, 12s, 1h2m: whole seconds, whole minutes from an
// hour on; negative durations print as 0s.
func Duration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	d = d.Round(time.Second)
	if d >= time.Hour {
		d = d.Round(time.Minute)
	}
	s := d.String() // 4m52s, 1h2m0s, 12s, 5m0s
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// PreciseDuration prints short durations with sub-second precision (0.42s)
// and longer ones like Duration.
func PreciseDuration(d time.Duration) string {
	if d < 10*time.Second {
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
	return Duration(d)
}

// Bytes prints 512 bytes, 2.0 KiB, 1.5 MiB.
func Bytes(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}
