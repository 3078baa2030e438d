package emulator

import (
	"crypto/sha256"
	"encoding/binary"
	"strconv"
)

// FailsNewFirmware reports whether the device with id is one of the share
// rate (0 to 1) of a host's devices that crash on booting a new firmware
// (HostConfig.FailRate, `otactl emulator --fail-rate R --seed S`). It is a
// pure function of (seed, id, rate), so a test can predict the failing
// devices: the first 8 bytes of SHA-256("otactl-fail-rate\x00" + seed in
// decimal + "\x00" + id), read as a big-endian number and scaled to
// [0, 1), fall below rate. Each device is picked on its own, so the number
// that fail is rate × devices on average, not exactly; a larger rate keeps
// every device a smaller one picked.
func FailsNewFirmware(seed int64, id string, rate float64) bool {
	if rate <= 0 {
		return false
	}
	sum := sha256.Sum256([]byte("otactl-fail-rate\x00" + strconv.FormatInt(seed, 10) + "\x00" + id))
	u := float64(binary.BigEndian.Uint64(sum[:8])>>11) / (1 << 53)
	return u < rate
}
