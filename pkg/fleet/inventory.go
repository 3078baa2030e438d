package fleet

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/url"
	"path"
	"strings"

	"github.com/otactl/otactl/pkg/transport"
)

// Target is one device of a rollout.
type Target struct {
	// Addr is the address to dial, as given (it may hold credentials:
	// never print it, print Address).
	Addr string
	// Address is Addr with any password or token hidden; Name the short
	// name shown in tables (see Name).
	Address string
	Name    string
	// Source says where the device was listed ("devices.txt:12",
	// "--device"), for errors.
	Source string
	// Device is the device's name in otactl's config file when it was
	// listed by that name (its settings then apply to it), else "".
	Device string
}

// key identifies a device whatever the credentials and the case of the
// scheme and host: two lines with one key are the same device.
func key(u *url.URL) string {
	if u.Scheme == "serial" {
		return "serial:" + path.Clean(u.Path)
	}
	return strings.ToLower(u.Scheme) + "://" + strings.ToLower(u.Host) + "/" + strings.Trim(u.Path, "/")
}

// InventoryError is a line of an inventory that cannot be used; the CLI
// makes it a usage error (exit 2).
type InventoryError struct {
	Source string // "devices.txt:12", "--device", "ids.txt:3"
	Err    error
}

func (e *InventoryError) Error() string { return e.Source + ": " + e.Err.Error() }
func (e *InventoryError) Unwrap() error { return e.Err }

// CheckFunc checks one address (a --port value) before anything is sent.
type CheckFunc func(addr string) (*url.URL, error)

// CheckAddress returns the check of an inventory line against a registry
// of transports: a --port value otactl can dial, and for MQTT a device id
// that is not an MQTT wildcard.
func CheckAddress(reg *transport.Registry) CheckFunc {
	return func(addr string) (*url.URL, error) {
		u, err := transport.ParsePort(addr)
		if err != nil {
			return nil, err
		}
		known := false
		for _, s := range reg.Schemes() {
			known = known || s == u.Scheme
		}
		if !known {
			return nil, fmt.Errorf("%w: unknown scheme %q in %s; known schemes: %s (or a serial device path)",
				transport.ErrBadPort, u.Scheme, transport.Redact(u), strings.Join(reg.Schemes(), ", "))
		}
		if u.Scheme == "mqtt" || u.Scheme == "mqtts" {
			id := strings.Trim(u.Path, "/")
			if id == "" {
				return nil, fmt.Errorf("%w: %s names no device id: write %s://broker[:port]/<device_id>", transport.ErrBadPort, transport.Redact(u), u.Scheme)
			}
			if strings.ContainsAny(id, "+#\x00") {
				return nil, fmt.Errorf("%w: device id %q must not contain '+', '#' or NUL (MQTT wildcards)", transport.ErrBadPort, id)
			}
		}
		if (u.Scheme == "http" || u.Scheme == "https" || u.Scheme == "ws" || u.Scheme == "wss") && u.Host == "" {
			return nil, fmt.Errorf("%w: %s names no host", transport.ErrBadPort, transport.Redact(u))
		}
		return u, nil
	}
}

// Inventory builds the targets of a rollout, refusing duplicates.
type Inventory struct {
	check   CheckFunc
	Targets []Target
	seen    map[string]string // key → source of its first listing
}

// NewInventory returns an empty inventory whose addresses check validates.
func NewInventory(check CheckFunc) *Inventory {
	return &Inventory{check: check, seen: map[string]string{}}
}

// Add adds one address, listed at source.
func (inv *Inventory) Add(addr, source string) error {
	u, err := inv.check(addr)
	if err != nil {
		return &InventoryError{Source: source, Err: err}
	}
	k := key(u)
	if first, dup := inv.seen[k]; dup {
		return &InventoryError{Source: source, Err: fmt.Errorf("%s is listed twice (first at %s): each device once", transport.Redact(u), first)}
	}
	inv.seen[k] = source
	inv.Targets = append(inv.Targets, Target{Addr: addr, Address: transport.Redact(u), Source: source})
	return nil
}

// maxLine bounds an inventory line.
const maxLine = 64 << 10

// lines calls fn with each address line of r (trimmed; blank lines and
// '#' comments skipped) and its number.
func lines(r io.Reader, name string, fn func(line string, n int) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxLine)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if n == 1 {
			line = strings.TrimPrefix(line, "\ufeff")
		}
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if err := fn(line, n); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return &InventoryError{Source: fmt.Sprintf("%s:%d", name, n+1), Err: fmt.Errorf("line longer than %d bytes: is this an inventory (one device address per line)?", maxLine)}
		}
		return fmt.Errorf("reading %s: %w", name, err)
	}
	return nil
}

// AddFile adds the addresses of an inventory file: one device address per
// line (a --port value: mqtt://broker/ID, http://host/rpc, a serial
// path…), '#' starts a comment line, blank lines are skipped.
func (inv *Inventory) AddFile(r io.Reader, name string) error {
	return lines(r, name, func(line string, n int) error {
		return inv.Add(line, fmt.Sprintf("%s:%d", name, n))
	})
}

// AddIDs adds one device per line of r behind one MQTT broker: broker is
// mqtt[s]://[user:pass@]host[:port], each line a device id.
func (inv *Inventory) AddIDs(broker *url.URL, r io.Reader, name string) error {
	return lines(r, name, func(id string, n int) error {
		src := fmt.Sprintf("%s:%d", name, n)
		if strings.ContainsAny(id, "/ \t") {
			return &InventoryError{Source: src, Err: fmt.Errorf("%q is not a device id (no '/' or spaces): --ids lists one id per line", id)}
		}
		u := *broker
		u.Path = "/" + id
		u.RawPath = ""
		return inv.Add(u.String(), src)
	})
}

// Name gives every target its short name: for devices behind one MQTT
// broker their id, for devices on one host their path, else the address
// (without secrets). Names are unique because addresses are.
func (inv *Inventory) Name() {
	hosts := map[string]bool{}
	for _, t := range inv.Targets {
		u, _ := transport.ParsePort(t.Addr)
		hosts[u.Scheme+"://"+strings.ToLower(u.Host)] = true
	}
	names := map[string]int{}
	for i := range inv.Targets {
		t := &inv.Targets[i]
		u, _ := transport.ParsePort(t.Addr)
		t.Name = t.Address
		if t.Device != "" {
			t.Name = t.Device // the name it was listed by
		} else if len(hosts) == 1 {
			switch u.Scheme {
			case "serial":
				t.Name = path.Base(u.Path)
			default:
				t.Name = strings.TrimSuffix(strings.Trim(u.Path, "/"), "/rpc")
				if t.Name == "" {
					t.Name = t.Address
				}
			}
		}
		names[t.Name]++
	}
	for i := range inv.Targets {
		if names[inv.Targets[i].Name] > 1 {
			inv.Targets[i].Name = inv.Targets[i].Address
		}
	}
}
