package ota

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/otactl/otactl/pkg/rpc"
)

// Identity tells one device from another: the fields of Sys.GetInfo that
// stay the same across reboots and updates (docs/reliability.md, "Another
// device at the port"). An update records it from the device's first answer
// and checks it on every answer after a lost link or a reboot: a serial
// port renumbered, a --port symlink left pointing at another adapter, an
// address taken over by another device must not make otactl take another
// device's answers as this one's.
type Identity struct {
	// ID is Sys.GetInfo "id" (device.id): every Mongoose OS device sends it.
	ID string `json:"id,omitempty"`
	// MAC is Sys.GetInfo "mac", when the device sends it.
	MAC string `json:"mac,omitempty"`
	// Arch is Sys.GetInfo "arch": the chip, which no update changes.
	Arch string `json:"arch,omitempty"`
}

// IdentityOf returns the identity in a Sys.GetInfo answer.
func IdentityOf(info SysInfo) Identity {
	return Identity{ID: info.ID, MAC: info.Mac, Arch: info.Arch}
}

// IsZero reports whether nothing identifies the device (its Sys.GetInfo
// sent none of the fields): then nothing can be checked.
func (i Identity) IsZero() bool { return i.ID == "" && i.MAC == "" && i.Arch == "" }

// String names the device: its id in quotes, with its MAC when known.
func (i Identity) String() string {
	id := fmt.Sprintf("%q", i.ID)
	if i.ID == "" {
		id = "(no id)"
	}
	if i.MAC != "" {
		id += " (mac " + i.MAC + ")"
	}
	return id
}

// normMAC drops separators and case, so that 24:0A:C4:… and 240ac4… are
// one address.
func normMAC(s string) string {
	return strings.ToLower(strings.NewReplacer(":", "", "-", "", ".", "").Replace(strings.TrimSpace(s)))
}

// Same reports whether got can be the device i names: the id it had is the
// same (a device that had one and now sends none is not known to be the
// same), and the MAC and arch, where both answers have them, agree.
func (i Identity) Same(got Identity) bool {
	if i.ID != "" && got.ID != i.ID {
		return false
	}
	if i.MAC != "" && got.MAC != "" && normMAC(i.MAC) != normMAC(got.MAC) {
		return false
	}
	if i.Arch != "" && got.Arch != "" && !strings.EqualFold(i.Arch, got.Arch) {
		return false
	}
	return true
}

// Check returns a *DeviceChangedError when info is not from the device i
// names; nil when it is, or when i is zero (nothing to check).
func (i Identity) Check(info SysInfo) error {
	if i.IsZero() {
		return nil
	}
	if got := IdentityOf(info); !i.Same(got) {
		return &DeviceChangedError{Want: i, Got: got}
	}
	return nil
}

// check reads Sys.GetInfo and checks it against i (nothing when i is zero).
func (i Identity) check(ctx context.Context, d *Device) error {
	_, err := i.checkInfo(ctx, d)
	return err
}

// checkInfo is check that also returns the Sys.GetInfo answer it read, with
// the moment it arrived, when it read one that passed (nil when i is zero).
func (i Identity) checkInfo(ctx context.Context, d *Device) (*Observation, error) {
	if i.IsZero() {
		return nil, nil
	}
	info, err := d.GetInfo(ctx)
	if err != nil {
		return nil, i.srcChanged(d.c, err)
	}
	if err := i.Check(info); err != nil {
		return nil, err
	}
	return &Observation{Info: info, At: time.Now()}, nil
}

// srcChanged turns err into a *DeviceChangedError when it is the RPC
// client's report of replies from two senders (src) on a link that one
// device answers at a time (serial, HTTP, WebSocket: not shared, unlike an
// MQTT device id): the port reaches another device now. Anything else is
// returned as it is, as is everything when i is zero.
func (i Identity) srcChanged(c Caller, err error) error {
	var de *rpc.DuplicateReplyError
	if i.IsZero() || !errors.As(err, &de) || len(de.Srcs) != 2 {
		return err
	}
	if sh, ok := c.(interface{ Shared() bool }); !ok || sh.Shared() {
		return err
	}
	got := Identity{ID: de.Srcs[1]}
	if i.ID != "" && got.ID == i.ID {
		got.ID = de.Srcs[0]
	}
	return &DeviceChangedError{Want: i, Got: got}
}

// DeviceChangedError says that the port now reaches another device than
// the one an update started with. Nothing that changes a device's state
// (OTA.Write, OTA.End, OTA.Commit, OTA.Revert, OTA.Update) was sent to the
// other device, and what became of the first one is not known: its reason
// is ReasonDeviceChanged (exit 5).
type DeviceChangedError struct {
	Want, Got Identity
	// While says what otactl was doing when it noticed ("resuming the
	// push at offset 4096").
	While string
	// Then says what is known of the device Want and what to do.
	Then string
	// NothingInstalled: the device Want cannot have installed the update
	// (a push cut before all its data was confirmed): the Report's result
	// is not_applied rather than unknown.
	NothingInstalled bool
}

func (e *DeviceChangedError) Error() string {
	s := fmt.Sprintf("the port now reaches device %s, not %s", e.Got, e.Want)
	if e.While != "" {
		s += " (seen " + e.While + ")"
	}
	s += ": otactl stopped and sent nothing that changes its state to device " + e.Got.String()
	if e.Then != "" {
		s += "; " + e.Then
	} else {
		s += fmt.Sprintf("; what device %s did is unknown", e.Want)
	}
	return s + " (a renumbered serial port, a --port link to another adapter, an address now used by another device: check --port)"
}

// Reason is ReasonDeviceChanged.
func (e *DeviceChangedError) Reason() string { return string(ReasonDeviceChanged) }
