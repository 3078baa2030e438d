package wire

import (
	"encoding/json"
	"testing"
)

// Each parameterised message: what the format function writes, the parse
// function reads back, also behind the code prefix newer firmware adds.
func TestMessagesRoundTrip(t *testing.T) {
	for _, c := range [][2]int64{{0, 2652}, {4096, 0}, {1 << 40, 1<<40 + 3}} {
		msg := WrongOffset(c[0], c[1])
		for _, m := range []string{msg, "-1 " + msg} {
			got, exp, ok := ParseWrongOffset(m)
			if !ok || got != c[0] || exp != c[1] {
				t.Errorf("ParseWrongOffset(%q) = %d, %d, %v", m, got, exp, ok)
			}
		}
	}
	if WrongOffset(0, 2652) != "Wrong offset 0, expected 2652" {
		t.Errorf("WrongOffset: %q", WrongOffset(0, 2652))
	}
	for _, ms := range []int64{0, 80, 100} {
		m := ShuttingDown(ms)
		if got, ok := ParseShuttingDown(m); !ok || got != ms {
			t.Errorf("ParseShuttingDown(%q) = %d, %v", m, got, ok)
		}
	}
	if ShuttingDown(-5) != "shutting down in 0 ms" {
		t.Errorf("ShuttingDown(-5) = %q", ShuttingDown(-5))
	}
	for _, code := range []int{404, 500} {
		m := InvalidHTTPResponse(code)
		if got, ok := ParseInvalidHTTPResponse("-1 " + m); !ok || got != code || !IsInvalidHTTPResponse(m) {
			t.Errorf("ParseInvalidHTTPResponse(%q) = %d, %v", m, got, ok)
		}
	}
}

// Parsers refuse what is not their message, and read firmware that words
// the wrong-offset refusal differently (what otactl read before the
// contract had a parser).
func TestParsersLenientAndStrict(t *testing.T) {
	for _, m := range []string{"Update not started", "", "Wrong offset", "expected nothing"} {
		if _, _, ok := ParseWrongOffset(m); ok {
			t.Errorf("ParseWrongOffset(%q) ok", m)
		}
	}
	for m, want := range map[string]int64{"bad offset; expected: 512": 512, "EXPECTED 7": 7, "-1 offset 3 but expected=9 now": 9} {
		if got, exp, ok := ParseWrongOffset(m); !ok || exp != want || got != -1 {
			t.Errorf("ParseWrongOffset(%q) = %d, %d, %v; want -1, %d", m, got, exp, ok, want)
		}
	}
	for _, m := range []string{"shutting down", "shutting down in soon ms", "shutting down in 5 s"} {
		if _, ok := ParseShuttingDown(m); ok {
			t.Errorf("ParseShuttingDown(%q) ok", m)
		}
	}
	if _, ok := ParseInvalidHTTPResponse("Invalid HTTP response code x"); ok {
		t.Error("ParseInvalidHTTPResponse took a non-number")
	}
	for in, want := range map[string]string{"-1 Wrong platform": "Wrong platform", " 3  Update failed ": "Update failed", "-1": "-1", "404": "404", "Update failed": "Update failed"} {
		if got := StripCode(in); got != want {
			t.Errorf("StripCode(%q) = %q, want %q", in, got, want)
		}
	}
	if !HasMessage("-1 update FAILED: connection reset", MsgDownloadFailed) || HasMessage("Update", MsgDownloadFailed) {
		t.Error("HasMessage")
	}
	if !IsStateWord(" Idle") || IsStateWord("Update failed") || StateSuccess.Word() != "success" {
		t.Error("state words")
	}
}

// The contract's types encode byte for byte as the emulator's replies and
// flash did before they were one type (maps sorted by key; the boot state
// in the device's order), and as otactl's requests did.
func TestWireJSONUnchanged(t *testing.T) {
	slot, off := 1, int64(2652)
	for _, tc := range []struct {
		v    any
		want string
	}{
		{BootState{ActiveSlot: 1, IsCommitted: false, RevertSlot: 0, CommitTimeout: 300},
			`{"active_slot":1,"is_committed":false,"revert_slot":0,"commit_timeout":300}`},
		{Status{State: StateProgress, Msg: "progress", IsCommitted: true, Partition: 0, CommitTimeout: 0, ProgressPercent: 40, Offset: &off},
			mapJSON(t, map[string]any{"state": 1, "msg": "progress", "is_committed": true, "partition": 0, "commit_timeout": 0, "progress_percent": 40, "offset": 2652})},
		{Status{State: StateIdle, Msg: "idle"},
			mapJSON(t, map[string]any{"state": 0, "msg": "idle", "is_committed": false, "partition": 0, "commit_timeout": 0, "progress_percent": 0})},
		{SysInfo{ID: "dev1", App: "app", FWVersion: "1.0.0", FWID: "b1", FWTimestamp: "", Arch: "esp32", Mac: "02aabbccddee", Uptime: 12, RAMSize: 327680, RAMFree: 204800, RunningSlot: &slot, Emulator: true},
			mapJSON(t, map[string]any{"id": "dev1", "app": "app", "fw_version": "1.0.0", "fw_id": "b1", "fw_timestamp": "", "arch": "esp32", "mac": "02aabbccddee",
				"uptime": int64(12), "ram_size": 327680, "ram_free": 204800, "ota_slot": 1, "emulator": true})},
		{SnapshotReply{Slot: 1}, `{"slot":1}`},
		{UpdateArgs{URL: "http://h/fw.zip", CommitTimeout: 300, Timeout: 600}, `{"url":"http://h/fw.zip","commit_timeout":300,"timeout":600}`},
		{BeginArgs{Timeout: 600, CommitTimeout: 300, Size: 9}, `{"timeout":600,"commit_timeout":300,"size":9}`},
		{WriteArgs{Offset: 0, Data: "AAE="}, `{"offset":0,"data":"AAE="}`},
		{CreateSnapshotArgs{SetAsRevert: true}, `{"set_as_revert":true}`},
		{RebootArgs{DelayMS: 100}, `{"delay_ms":100}`},
	} {
		b, err := json.Marshal(tc.v)
		if err != nil || string(b) != tc.want {
			t.Errorf("%T: %s (%v), want %s", tc.v, b, err, tc.want)
		}
	}
}

func mapJSON(t *testing.T, m map[string]any) string {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// OTA.Status's "offset" (the emulator's extension) is read, as a number or
// a numeric string; absent, negative or unreadable, it stays nil.
func TestParseStatusOffset(t *testing.T) {
	for raw, want := range map[string]int64{`{"state":1,"offset":2652}`: 2652, `{"state":1,"offset":"4096"}`: 4096, `{"state":1,"offset":0}`: 0} {
		st, err := ParseStatus(json.RawMessage(raw))
		if err != nil || st.Offset == nil || *st.Offset != want {
			t.Errorf("ParseStatus(%s): offset %v, err %v; want %d", raw, st.Offset, err, want)
		}
	}
	for _, raw := range []string{`{"state":1}`, `{"state":1,"offset":null}`, `{"state":1,"offset":-1}`} {
		st, err := ParseStatus(json.RawMessage(raw))
		if err != nil || st.Offset != nil {
			t.Errorf("ParseStatus(%s): offset %v, err %v; want none", raw, st.Offset, err)
		}
	}
}
