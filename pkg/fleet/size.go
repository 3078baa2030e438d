package fleet

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Size is a number of devices given as a count ("10") or as a share of
// the rollout ("5%"): --batch and --max-failures.
type Size struct {
	N       int
	Percent float64
	IsPct   bool
	set     bool
}

// ParseSize reads "N" (a count, at least 0) or "P%" (0 to 100).
func ParseSize(s string) (Size, error) {
	s = strings.TrimSpace(s)
	if p, ok := strings.CutSuffix(s, "%"); ok {
		v, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || math.IsNaN(v) || v < 0 || v > 100 {
			return Size{}, fmt.Errorf("%q: a percentage is from 0%% to 100%%", s)
		}
		return Size{Percent: v, IsPct: true, set: true}, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return Size{}, fmt.Errorf("%q: want a number of devices (10) or a percentage (5%%)", s)
	}
	return Size{N: n, set: true}, nil
}

// IsSet reports whether the size was given.
func (s Size) IsSet() bool { return s.set }

func (s Size) String() string {
	if s.IsPct {
		return strconv.FormatFloat(s.Percent, 'f', -1, 64) + "%"
	}
	return strconv.Itoa(s.N)
}

// Floor is the size for total devices, a percentage rounded down: the
// failure threshold (5% of 30 devices allows 1 failure).
func (s Size) Floor(total int) int {
	if !s.IsPct {
		return s.N
	}
	return int(math.Floor(float64(total)*s.Percent/100 + 1e-9))
}

// Ceil is the size for total devices, a percentage rounded up and at least
// 1: a batch (10% of 15 devices is batches of 2).
func (s Size) Ceil(total int) int {
	if !s.IsPct {
		return max(s.N, 1)
	}
	return max(int(math.Ceil(float64(total)*s.Percent/100-1e-9)), 1)
}

// SizeFlag is a pflag.Value for a Size.
type SizeFlag struct{ S *Size }

func (f SizeFlag) String() string {
	if f.S == nil || !f.S.set {
		return ""
	}
	return f.S.String()
}

func (f SizeFlag) Set(v string) error {
	s, err := ParseSize(v)
	if err != nil {
		return err
	}
	*f.S = s
	return nil
}

func (f SizeFlag) Type() string { return "N|P%" }
