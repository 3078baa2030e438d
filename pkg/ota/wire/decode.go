package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ErrBadReply is wrapped by *ReplyError: the device answered, without an
// error, but its result does not carry what the command needs. The CLI
// maps it to exit code 1, in text and JSON mode alike.
var ErrBadReply = errors.New("the device's reply lacks what otactl needs")

// ReplyError is a result that lacks required fields or holds them with a
// type no device sends. docs/exit-codes.md lists which fields each method
// must carry; everything else is optional, and numbers may come as numeric
// strings ("1"), as the device's own JSON scanner allows.
type ReplyError struct {
	Method string
	// Missing names the required fields that are absent (or null).
	Missing []string
	// Invalid names fields present with an unusable value, and why.
	Invalid []string
	// Got is the result as the device sent it ("null" when it sent none).
	Got json.RawMessage
}

func (e *ReplyError) Error() string {
	var what []string
	if len(e.Missing) > 0 {
		what = append(what, "lacks "+strings.Join(e.Missing, ", "))
	}
	if len(e.Invalid) > 0 {
		what = append(what, "has "+strings.Join(e.Invalid, ", "))
	}
	got := string(bytes.TrimSpace(e.Got))
	if got == "" || got == "null" {
		got = "no result"
	} else if len(got) > 200 {
		got = got[:200] + "…"
	}
	return fmt.Sprintf("%s: the device's reply %s (it sent: %s); this device does not answer as a Mongoose OS OTA service does", e.Method, strings.Join(what, " and "), got)
}

// Unwrap returns ErrBadReply.
func (e *ReplyError) Unwrap() error { return ErrBadReply }

// object is a decoded result whose fields are read leniently.
type object struct {
	method string
	raw    json.RawMessage
	m      map[string]json.RawMessage
	err    *ReplyError
}

// decodeObject reads a result that must be a JSON object. required names
// the fields it must carry; they are reported missing all at once when the
// result is not an object at all.
func decodeObject(method string, raw json.RawMessage, required ...string) *object {
	o := &object{method: method, raw: raw}
	if err := json.Unmarshal(raw, &o.m); err != nil || o.m == nil {
		o.m = map[string]json.RawMessage{}
		if len(required) == 0 {
			o.fail("", "a result that is not a JSON object")
		}
	}
	for _, k := range required {
		if v, ok := o.m[k]; !ok || string(bytes.TrimSpace(v)) == "null" {
			o.missing(k)
		}
	}
	return o
}

func (o *object) replyErr() *ReplyError {
	if o.err == nil {
		o.err = &ReplyError{Method: o.method, Got: o.raw}
	}
	return o.err
}

func (o *object) missing(k string) {
	e := o.replyErr()
	for _, m := range e.Missing {
		if m == k {
			return
		}
	}
	e.Missing = append(e.Missing, k)
}

func (o *object) fail(k, why string) {
	e := o.replyErr()
	if k == "" {
		e.Invalid = append(e.Invalid, why)
		return
	}
	e.Invalid = append(e.Invalid, k+" "+why)
}

// Err is the ReplyError collected so far, or nil.
func (o *object) Err() error {
	if o.err == nil {
		return nil
	}
	return o.err
}

// present reports whether k was sent and is not null.
func (o *object) present(k string) bool {
	v, ok := o.m[k]
	return ok && string(bytes.TrimSpace(v)) != "null"
}

// int reads an integer: a JSON number without fraction, or a string
// holding one ("1", as json_scanf would read it).
func (o *object) int(k string) int {
	if !o.present(k) {
		return 0
	}
	f, ok := number(o.m[k])
	if !ok || f != math.Trunc(f) || math.Abs(f) > math.MaxInt32 {
		o.fail(k, "that is not an integer: "+clip(o.m[k]))
		return 0
	}
	return int(f)
}

// int64 reads an integer that may exceed 32 bits (a
// byte offset): a JSON number without fraction, or a string holding one.
func (o *object) int64(k string) int64 {
	if !o.present(k) {
		return 0
	}
	f, ok := number(o.m[k])
	if !ok || f != math.Trunc(f) || math.Abs(f) > 1<<53 {
		o.fail(k, "that is not an integer: "+clip(o.m[k]))
		return 0
	}
	return int64(f)
}

// float reads a number, or a string holding one.
func (o *object) float(k string) float64 {
	if !o.present(k) {
		return 0
	}
	f, ok := number(o.m[k])
	if !ok {
		o.fail(k, "that is not a number: "+clip(o.m[k]))
	}
	return f
}

// bool reads true/false (or 0/1, which some firmware prints for %B).
func (o *object) bool(k string) bool {
	if !o.present(k) {
		return false
	}
	var b bool
	if json.Unmarshal(o.m[k], &b) == nil {
		return b
	}
	if f, ok := number(o.m[k]); ok && (f == 0 || f == 1) {
		return f == 1
	}
	o.fail(k, "that is not true or false: "+clip(o.m[k]))
	return false
}

// str reads a string; a value of another type is left empty (these fields
// only describe, nothing is decided on them).
func (o *object) str(k string) string {
	var s string
	_ = json.Unmarshal(o.m[k], &s)
	return s
}

// number reads a JSON number or a string holding a decimal number.
func number(raw json.RawMessage) (float64, bool) {
	var f float64
	if json.Unmarshal(raw, &f) == nil {
		return f, true
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return 0, false
	}
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	return f, err == nil && !math.IsNaN(f) && !math.IsInf(f, 0)
}

func clip(raw json.RawMessage) string {
	s := string(bytes.TrimSpace(raw))
	if len(s) > 40 {
		s = s[:40] + "…"
	}
	return s
}

// Required result fields: what each method's reply must carry for otactl
// to say anything about it (docs/exit-codes.md, "Replies otactl needs").
var (
	// BootStateRequired: without these, which slot boots and whether it
	// falls back are unknown. commit_timeout is optional (0 when absent).
	BootStateRequired = []string{"active_slot", "is_committed", "revert_slot"}
	// StatusRequired: the updater state.
	StatusRequired = []string{"state"}
	// SnapshotRequired: the slot written.
	SnapshotRequired = []string{"slot"}
)

// ParseBootState decodes an OTA.GetBootState result strictly enough to
// refuse one that lacks a required field (BootStateRequired), and
// leniently otherwise (numbers as numeric strings, booleans as 0/1).
func ParseBootState(raw json.RawMessage) (BootState, error) {
	o := decodeObject(OTAGetBootState, raw, BootStateRequired...)
	bs := BootState{
		ActiveSlot:    o.int("active_slot"),
		IsCommitted:   o.bool("is_committed"),
		RevertSlot:    o.int("revert_slot"),
		CommitTimeout: o.int("commit_timeout"),
	}
	return bs, o.Err()
}

// ParseStatus decodes an OTA.Status result (state required).
func ParseStatus(raw json.RawMessage) (Status, error) {
	o := decodeObject(OTAStatus, raw, StatusRequired...)
	st := Status{
		State:           State(o.int("state")),
		Msg:             o.str("msg"),
		ProgressPercent: o.int("progress_percent"),
		IsCommitted:     o.bool("is_committed"),
		CommitTimeout:   o.int("commit_timeout"),
		Partition:       o.int("partition"),
		Raw:             raw,
	}
	if o.present("offset") {
		if off := o.int64("offset"); off >= 0 {
			st.Offset = &off
		}
	}
	return st, o.Err()
}

// ParseSnapshot decodes an OTA.CreateSnapshot result: the slot written
// (SnapshotRequired).
func ParseSnapshot(raw json.RawMessage) (SnapshotReply, error) {
	o := decodeObject(OTACreateSnapshot, raw, SnapshotRequired...)
	return SnapshotReply{Slot: o.int("slot")}, o.Err()
}

// ParseSysInfo decodes a Sys.GetInfo result: it must be a JSON object;
// every field is optional (old firmware sends fewer), a field of an
// unexpected type is left zero, and uptime may be a number or a numeric
// string.
func ParseSysInfo(raw json.RawMessage) (SysInfo, error) {
	o := decodeObject(SysGetInfo, raw)
	info := SysInfo{
		ID: o.str("id"), App: o.str("app"), Arch: o.str("arch"),
		FWVersion: o.str("fw_version"), FWID: o.str("fw_id"),
		Raw: raw,
	}
	if f, ok := number(o.m["uptime"]); ok && f >= 0 {
		info.Uptime = f
	}
	if o.present(RunningSlotField) {
		if f, ok := number(o.m[RunningSlotField]); ok && f >= 0 && f == math.Trunc(f) && f < math.MaxInt32 {
			slot := int(f)
			info.RunningSlot = &slot
		}
	}
	return info, o.Err()
}
