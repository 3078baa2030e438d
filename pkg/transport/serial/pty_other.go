//go:build !linux

package serial

import (
	"errors"
	"io"
	"runtime"
)

// OpenPTY creates a pseudo-terminal for an emulated device. It is only
// implemented on Linux.
func OpenPTY(linkPath string) (master io.ReadWriteCloser, slavePath string, err error) {
	return nil, "", errors.New("emulated serial ports (pty) are not supported on " + runtime.GOOS + " yet; serve the emulator over HTTP or WebSocket instead")
}
