//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package serial

// portLock is a no-op where the system opens serial ports exclusively by
// itself (Windows) or offers no flock(2).
type portLock struct{}

func lockPort(string, []string) (*portLock, error) { return &portLock{}, nil }

func (l *portLock) release() {}
