package human

import (
	"testing"
	"time"
)

func TestDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		4*time.Minute + 52*time.Second: "4m52s", 5 * time.Minute: "5m", 30 * time.Second: "30s",
		time.Hour + 2*time.Minute: "1h2m", 0: "0s", 2 * time.Hour: "2h", -time.Second: "0s", 1499 * time.Millisecond: "1s",
	} {
		if got := Duration(d); got != want {
			t.Errorf("Duration(%v) = %s, want %s", d, got, want)
		}
	}
	if got := PreciseDuration(420 * time.Millisecond); got != "0.42s" {
		t.Errorf("PreciseDuration = %s", got)
	}
	for n, want := range map[int64]string{512: "512 bytes", 2048: "2.0 KiB", 3 << 19: "1.5 MiB"} {
		if got := Bytes(n); got != want {
			t.Errorf("Bytes(%d) = %s, want %s", n, got, want)
		}
	}
}
