//go:build !linux

package serial

import (
	"errors"
	"runtime"
)

type sideFD struct{}

func openSide(string) (*sideFD, error) {
	return nil, errors.New("hardware flow control is not supported on " + runtime.GOOS + " yet: drop ?hwflow=1")
}

func (*sideFD) enableRTSCTS() error { return nil }

func (*sideFD) close() {}
