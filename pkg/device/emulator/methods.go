package emulator

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/otactl/otactl/pkg/ota/wire"
	"github.com/otactl/otactl/pkg/rpc"
)

func (d *Device) registerMethods() {
	s := d.srv
	// The device's methods and replies: pkg/ota/wire (docs/protocol.md,
	// "Methods").
	s.Handle(wire.OTAUpdate, d.otaUpdate)
	s.Handle(wire.OTACommit, d.otaCommit)
	s.Handle(wire.OTARevert, d.otaRevert)
	s.Handle(wire.OTACreateSnapshot, d.otaCreateSnapshot)
	s.Handle(wire.OTAGetBootState, d.otaGetBootState)
	s.Handle(wire.OTASetBootState, d.otaSetBootState)
	s.Handle(wire.OTAStatus, d.otaStatus)
	s.Handle(wire.OTABegin, d.otaBegin)
	s.Handle(wire.OTAWrite, d.otaWrite)
	s.Handle(wire.OTAEnd, d.otaEnd)
	s.Handle(wire.SysGetInfo, d.sysGetInfo)
	s.Handle(wire.SysReboot, d.sysReboot)
	s.Handle(wire.RPCList, func(context.Context, *rpc.Request) (any, error) { return s.Methods(), nil })
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
		return nil, rpc.Errorf(wire.CodeFailed, "")
	}
	if err := d.commitLocked(); err != nil {
		return nil, rpc.Errorf(wire.CodeFailed, "%s", err)
	}
	return nil, nil
}

func (d *Device) otaRevert(ctx context.Context, _ *rpc.Request) (any, error) {
	d.mu.Lock()
	if d.mem.IsCommitted {
		d.mu.Unlock()
		return nil, rpc.Errorf(wire.CodeFailed, "")
	}
	err := d.revertLocked()
	d.mu.Unlock()
	if err != nil {
		return nil, rpc.Errorf(wire.CodeFailed, "%s", err)
	}
	d.rebootAfterReply(callFrom(ctx), d.cfg.RebootAfter)
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
		return nil, rpc.Errorf(wire.CodeNoField, "")
	}
	if !d.fl.validSlot(st.ActiveSlot) || !d.fl.validSlot(st.RevertSlot) {
		return nil, rpc.Errorf(wire.CodeBadSlot, "")
	}
	if u := d.upd; u != nil && (st.ActiveSlot == u.target || !st.IsCommitted && st.RevertSlot == u.target) {
		// The slot holds half an update: booting it after a power cut
		// would find nothing.
		d.log.Error(fmt.Sprintf("Slot %d is being written by an update: not setting the boot state to it", u.target))
		return nil, rpc.Errorf(wire.CodeBadSlot, "")
	}
	if ct >= 0 {
		st.CommitTimeout = int(ct)
	}
	if err := d.fl.saveBoot(st); err != nil {
		if ct >= 0 {
			return nil, rpc.Errorf(wire.CodeCommitTimeoutWrite, "")
		}
		return nil, rpc.Errorf(wire.CodeBadSlot, "")
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
	st := wire.Status{
		State:           d.status.state,
		Msg:             d.statusMsgLocked(),
		IsCommitted:     d.mem.IsCommitted,
		Partition:       d.mem.ActiveSlot,
		CommitTimeout:   d.mem.CommitTimeout,
		ProgressPercent: progress,
	}
	if off, ok := d.pushOffsetLocked(); ok {
		st.Offset = &off // emulator extension: where a push resumes
	}
	return st, nil
}

func (d *Device) otaCreateSnapshot(_ context.Context, req *rpc.Request) (any, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.mem.IsCommitted {
		return nil, rpc.Errorf(wire.CodeFailed, wire.MsgSnapUncommitted)
	}
	if d.upd != nil {
		return nil, rpc.Errorf(wire.CodeFailed, wire.MsgSnapFailed)
	}
	target := d.spareSlot()
	if target < 0 {
		d.log.Error(wire.NextBootBusy(d.mem.ActiveSlot, "a snapshot"))
		return nil, rpc.Errorf(wire.CodeFailed, wire.MsgSnapFailed)
	}
	if err := d.fl.copySlot(d.running, target); err != nil {
		d.log.Error("snapshot failed", "err", err)
		return nil, rpc.Errorf(wire.CodeFailed, wire.MsgSnapFailed)
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
				return nil, rpc.Errorf(wire.CodeCommitTimeoutWrite, wire.MsgSetCommitTimeoutFailed)
			}
			return nil, rpc.Errorf(wire.CodeBadSlot, wire.MsgSetBootFailed)
		}
		d.mem = st
	}
	return wire.SnapshotReply{Slot: target}, nil
}

// spareSlot is the slot an update or a snapshot writes: the first one
// after the running slot that the next boot does not use. It is -1 when
// there is none (OTA.SetBootState pointed the next boot at the only other
// slot): erasing the slot the next boot uses would leave nothing to boot
// after a power cut, so the device refuses until it has booted that slot
// (docs/emulator.md, "How faithful it is").
func (d *Device) spareSlot() int {
	for i := 1; i < d.cfg.Slots; i++ {
		if s := (d.running + i) % d.cfg.Slots; s != d.mem.ActiveSlot {
			return s
		}
	}
	return -1
}

func (d *Device) sysGetInfo(context.Context, *rpc.Request) (any, error) {
	up := d.uptime()
	d.mu.Lock()
	defer d.mu.Unlock()
	m := d.manifest
	sum := sha1.Sum([]byte(d.cfg.ID))
	mac := hex.EncodeToString(append([]byte{0x02}, sum[:5]...))
	slot := d.running
	return wire.SysInfo{
		ID:          d.cfg.ID,
		App:         m.Name,
		FWVersion:   m.Version,
		FWID:        m.BuildID,
		FWTimestamp: m.BuildTimestamp,
		Arch:        d.cfg.Platform,
		Mac:         mac,
		Uptime:      float64(up),
		RAMSize:     320 * 1024,
		RAMFree:     200 * 1024,
		RunningSlot: &slot,
		Emulator:    true,
	}, nil
}

func (d *Device) sysReboot(ctx context.Context, req *rpc.Request) (any, error) {
	delay := d.cfg.RebootAfter
	if ms, ok, err := req.Int("delay_ms"); ok && err == nil {
		if ms < 0 {
			return nil, rpc.Errorf(wire.CodeBadArgument, wire.MsgInvalidDelay)
		}
		delay = time.Duration(ms) * time.Millisecond
	}
	d.rebootAfterReply(callFrom(ctx), delay)
	return nil, nil
}
