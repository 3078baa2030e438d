package emulator

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/otactl/otactl/pkg/rpc"
)

// Status messages the device replies with (device-semantics.md §1).
const (
	msgMalformed      = "Malformed request"
	msgInitFailed     = "Failed to init updater"
	msgApplied        = "Update applied, finalizing"
	msgSnapUncommited = "Cannot create snapshots in uncommitted state"
	msgSnapFailed     = "Failed to create snapshot"
	msgSetBootFailed  = "Failed to set boot state"
	msgSetCTFailed    = "Failed to set commit timeout"
	msgNotStarted     = "Update not started"
	msgNotModified    = "Not Modified"
)

func (d *Device) registerMethods() {
	s := d.srv
	s.Handle("OTA.Update", d.otaUpdate)
	s.Handle("OTA.Commit", d.otaCommit)
	s.Handle("OTA.Revert", d.otaRevert)
	s.Handle("OTA.CreateSnapshot", d.otaCreateSnapshot)
	s.Handle("OTA.GetBootState", d.otaGetBootState)
	s.Handle("OTA.SetBootState", d.otaSetBootState)
	s.Handle("OTA.Status", d.otaStatus)
	s.Handle("OTA.Begin", d.otaBegin)
	s.Handle("OTA.Write", d.otaWrite)
	s.Handle("OTA.End", d.otaEnd)
	s.Handle("Sys.GetInfo", d.sysGetInfo)
	s.Handle("Sys.Reboot", d.sysReboot)
	s.Handle("RPC.List", func(context.Context, *rpc.Request) (any, error) { return s.Methods(), nil })
}

// intArg reads an integer argument the way the device's JSON scanner does:
// absent or unparsable leaves def.
func intArg(req *rpc.Request, name string, def int64) int64 {
	v, ok, err := req.Int(name)
	if !ok || err != nil {
		return def
	}
	return v
}

func (d *Device) otaCommit(context.Context, *rpc.Request) (any, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.mem.IsCommitted {
		return nil, rpc.Errorf(-1, "")
	}
	if err := d.commitLocked(); err != nil {
		return nil, rpc.Errorf(-1, "%s", err)
	}
	return nil, nil
}

func (d *Device) otaRevert(context.Context, *rpc.Request) (any, error) {
	d.mu.Lock()
	if d.mem.IsCommitted {
		d.mu.Unlock()
		return nil, rpc.Errorf(-1, "")
	}
	err := d.revertLocked()
	d.mu.Unlock()
	if err != nil {
		return nil, rpc.Errorf(-1, "%s", err)
	}
	d.requestReboot(d.cfg.RebootAfter)
	return nil, nil
}

func (d *Device) otaGetBootState(context.Context, *rpc.Request) (any, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.mem, nil
}

func (d *Device) otaSetBootState(_ context.Context, req *rpc.Request) (any, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.mem
	n := 0
	if v, ok, err := req.Int("active_slot"); ok {
		n++
		if err == nil {
			st.ActiveSlot = int(v)
		}
	}
	if req.Has("is_committed") {
		n++
		st.IsCommitted = req.Bool("is_committed")
	}
	if v, ok, err := req.Int("revert_slot"); ok {
		n++
		if err == nil {
			st.RevertSlot = int(v)
		}
	}
	ct := int64(-1)
	if v, ok, err := req.Int("commit_timeout"); ok {
		n++
		if err == nil {
			ct = v
		}
	}
	if n == 0 {
		return nil, rpc.Errorf(-2, "")
	}
	if !d.fl.validSlot(st.ActiveSlot) || !d.fl.validSlot(st.RevertSlot) {
		return nil, rpc.Errorf(-3, "")
	}
	if u := d.upd; u != nil && (st.ActiveSlot == u.target || !st.IsCommitted && st.RevertSlot == u.target) {
		// The slot holds half an update: booting it after a power cut
		// would find nothing.
		d.log.Error(fmt.Sprintf("Slot %d is being written by an update: not setting the boot state to it", u.target))
		return nil, rpc.Errorf(-3, "")
	}
	if ct >= 0 {
		st.CommitTimeout = int(ct)
	}
	if err := d.fl.saveBoot(st); err != nil {
		if ct >= 0 {
			return nil, rpc.Errorf(-4, "")
		}
		return nil, rpc.Errorf(-3, "")
	}
	d.mem = st
	return nil, nil
}

func (d *Device) otaStatus(context.Context, *rpc.Request) (any, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	progress := d.status.progress
	if u := d.upd; u != nil {
		progress = u.percent()
	}
	st := map[string]any{
		"state":            d.status.state,
		"msg":              d.statusMsgLocked(),
		"is_committed":     d.mem.IsCommitted,
		"partition":        d.mem.ActiveSlot,
		"commit_timeout":   d.mem.CommitTimeout,
		"progress_percent": progress,
	}
	if off, ok := d.pushOffsetLocked(); ok {
		st["offset"] = off // emulator extension: where a push resumes
	}
	return st, nil
}

func (d *Device) otaCreateSnapshot(_ context.Context, req *rpc.Request) (any, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.mem.IsCommitted {
		return nil, rpc.Errorf(-1, msgSnapUncommited)
	}
	if d.upd != nil {
		return nil, rpc.Errorf(-1, msgSnapFailed)
	}
	target := d.spareSlot()
	if target < 0 {
		d.log.Error(nextBootMsg(d.mem.ActiveSlot, "a snapshot"))
		return nil, rpc.Errorf(-1, msgSnapFailed)
	}
	if err := d.fl.copySlot(d.running, target); err != nil {
		d.log.Error("snapshot failed", "err", err)
		return nil, rpc.Errorf(-1, msgSnapFailed)
	}
	if req.Bool("set_as_revert") {
		st := d.mem
		st.IsCommitted = false
		st.RevertSlot = target
		ct := intArg(req, "commit_timeout", -1)
		if ct >= 0 {
			st.CommitTimeout = int(ct)
		}
		if err := d.fl.saveBoot(st); err != nil {
			if ct >= 0 {
				return nil, rpc.Errorf(-4, msgSetCTFailed)
			}
			return nil, rpc.Errorf(-3, msgSetBootFailed)
		}
		d.mem = st
	}
	return map[string]int{"slot": target}, nil
}

// spareSlot is the slot an update or a snapshot writes: the first one
// after the running slot that the next boot does not use. It is -1 when
// there is none (OTA.SetBootState pointed the next boot at the only other
// slot): erasing the slot the next boot uses would leave nothing to boot
// after a power cut, so the device refuses until it has booted that slot
// (docs/emulator.md, "Snapshots and boot state").
func (d *Device) spareSlot() int {
	for i := 1; i < d.cfg.Slots; i++ {
		if s := (d.running + i) % d.cfg.Slots; s != d.mem.ActiveSlot {
			return s
		}
	}
	return -1
}

func nextBootMsg(slot int, what string) string {
	return fmt.Sprintf("The next boot uses slot %d, the slot %s would write: reboot first", slot, what)
}

func (d *Device) sysGetInfo(context.Context, *rpc.Request) (any, error) {
	up := d.uptime()
	d.mu.Lock()
	defer d.mu.Unlock()
	m := d.manifest
	sum := sha1.Sum([]byte(d.cfg.ID))
	mac := hex.EncodeToString(append([]byte{0x02}, sum[:5]...))
	info := map[string]any{
		"id":           d.cfg.ID,
		"app":          m.Name,
		"fw_version":   m.Version,
		"fw_id":        m.BuildID,
		"fw_timestamp": m.BuildTimestamp,
		"arch":         d.cfg.Platform,
		"mac":          mac,
		"uptime":       up,
		"ram_size":     320 * 1024,
		"ram_free":     200 * 1024,
		"ota_slot":     d.running,
		"emulator":     true,
	}
	return info, nil
}

func (d *Device) sysReboot(_ context.Context, req *rpc.Request) (any, error) {
	delay := d.cfg.RebootAfter
	if ms, ok, err := req.Int("delay_ms"); ok && err == nil {
		if ms < 0 {
			return nil, rpc.Errorf(400, "invalid delay value")
		}
		delay = time.Duration(ms) * time.Millisecond
	}
	d.requestReboot(delay)
	return nil, nil
}
