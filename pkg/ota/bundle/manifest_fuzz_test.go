package bundle

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"testing"
)

// FuzzManifest checks the manifest parser and its rules (ParseManifest,
// Validate) and the parsing of the signature extra field (findExtra,
// ParseSignatures, replaceExtra) on any input. The seed corpus is in
// testdata/fuzz/FuzzManifest. Properties:
//   - no panic;
//   - a manifest that Validate accepts has platform, version, build_id and
//     parts, flat part names and srcs, and no two parts with one src; one
//     it refuses gets an *Error with a device message;
//   - an accepted manifest written out (Indented) parses to the same
//     manifest, which Validate judges the same way;
//   - NewReader on a bundle holding the manifest agrees: it refuses exactly
//     what ParseManifest or Validate refuse, with the same message;
//   - the signature field found in any extra data parses or is refused;
//     once parsed, written (Marshal) and parsed again it is the same; and
//     put into any extra data (replaceExtra) it is the field found there.
func FuzzManifest(f *testing.F) {
	f.Add([]byte(`{"name":"app","platform":"esp32","version":"1.0","build_id":"b","parts":{"app":{"type":"app","src":"app.bin","addr":"0x10000","size":3,"cs_sha1":"aa"}}}`), []byte{})
	f.Add([]byte(`{"platform":"esp32","version":"1","build_id":"b","parts":{"a":{"src":"x"},"b":{"src":"x"}}}`), []byte{})
	f.Add([]byte(`{"platform":"esp32","version":"1","build_id":"b","parts":{"../a":{"src":"x"}},"emulator_behavior":"ok"}`), []byte{})
	f.Add([]byte(`{"platform":"esp32","version":"1","build_id":"b","parts":{"nvs":{"fill":255,"size":1e3}}}`),
		[]byte("\x3a\x29\x17\x00{\"sig0\":\"MAYCAQECAQE=\"}\x01"))
	f.Add([]byte(`[]`), []byte("\x01\x00\x02\x00ab\x3a\x29\x0b\x00{\"x\":[1,2]}"))
	f.Add([]byte(`null`), []byte("\x3a\x29\x05\x00{\"sig"))
	f.Fuzz(func(t *testing.T, data, extra []byte) {
		checkManifest(t, data)
		checkSignatureField(t, extra)
	})
}

func checkManifest(t *testing.T, data []byte) {
	t.Helper()
	m, perr := ParseManifest(data)
	var verr error
	if perr == nil {
		verr = m.Validate()
	}
	// The streaming reader agrees with ParseManifest and Validate.
	b := bytes.Join([][]byte{rawEntry(ManifestName, data), {0x50, 0x4b, 1, 2}}, nil)
	_, rerr := NewReader(bytes.NewReader(b))
	switch {
	case len(data) > MaxManifestSize:
		if !errors.Is(rerr, ErrManifestParse) {
			t.Fatalf("NewReader took a manifest of %d bytes: %v", len(data), rerr)
		}
	case perr != nil:
		if !errors.Is(rerr, ErrManifestParse) {
			t.Fatalf("ParseManifest refused it (%v), NewReader said %v", perr, rerr)
		}
	case verr != nil:
		var e *Error
		if !errors.As(verr, &e) {
			t.Fatalf("Validate's error has no device message: %v", verr)
		}
		if rerr == nil || StatusMessage(rerr) != e.Msg {
			t.Fatalf("Validate refused it (%v), NewReader said %v", verr, rerr)
		}
	default:
		if rerr != nil {
			t.Fatalf("Validate accepted it, NewReader said %v", rerr)
		}
	}
	if perr != nil {
		return
	}
	if verr == nil {
		if m.Platform == "" || m.Version == "" || m.BuildID == "" || len(m.Parts) == 0 {
			t.Fatalf("accepted without a required field: %+v", m)
		}
		withData := 0
		for name, p := range m.Parts {
			if p.Src == "" {
				continue
			}
			withData++
			if ValidPartName(name) != nil || ValidSrc(p.Src) != nil {
				t.Fatalf("accepted part %q with src %q", name, p.Src)
			}
		}
		if len(m.DataParts()) != withData {
			t.Fatalf("accepted %d parts with data but only %d srcs", withData, len(m.DataParts()))
		}
	}
	// Written out and read again: the same manifest, the same verdict.
	out, err := m.Indented()
	if err != nil {
		t.Fatalf("a parsed manifest does not write: %v", err)
	}
	m2, err := ParseManifest(out)
	if err != nil {
		t.Fatalf("the written manifest does not parse: %v\n%s", err, out)
	}
	a, _ := json.Marshal(m)
	b2, _ := json.Marshal(m2)
	if !bytes.Equal(a, b2) {
		t.Fatalf("round trip changed the manifest:\n%s\n%s", a, b2)
	}
	if v2 := m2.Validate(); (v2 == nil) != (verr == nil) || (v2 != nil && StatusMessage(v2) != StatusMessage(verr)) {
		t.Fatalf("Validate before %v, after a round trip %v", verr, v2)
	}
}

func checkSignatureField(t *testing.T, extra []byte) {
	t.Helper()
	field := findExtra(extra, SignatureExtraID)
	s, err := ParseSignatures(field)
	if err == nil {
		enc := s.Marshal()
		s2, err := ParseSignatures(enc)
		if err != nil {
			t.Fatalf("written signatures %q do not parse: %v", enc, err)
		}
		if len(s2.Bad) != 0 || !bytes.Equal(s2.Marshal(), enc) || !sameSigs(s2, s) {
			t.Fatalf("signatures changed in a round trip: %q -> %q", enc, s2.Marshal())
		}
	}
	// Whatever the extra data holds, the field put there is the one found.
	want := []byte(`{"sig1":"MAYCAQECAQE="}`)
	rec, err := SignatureExtraField(want)
	if err != nil {
		t.Fatal(err)
	}
	if got := findExtra(replaceExtra(extra, SignatureExtraID, rec), SignatureExtraID); !bytes.Equal(got, want) {
		t.Fatalf("replaceExtra(%q) put the signature field where it is not found (found %q)", extra, got)
	}
	// and every other well-formed record is kept.
	kept := replaceExtra(extra, SignatureExtraID, nil)
	for rest := extra; len(rest) >= 4; {
		id, n := binary.LittleEndian.Uint16(rest), int(binary.LittleEndian.Uint16(rest[2:]))
		if 4+n > len(rest) {
			break
		}
		if id != SignatureExtraID && !bytes.Equal(findExtra(kept, id), findExtra(extra, id)) {
			t.Fatalf("replaceExtra(%q) lost record %#04x", extra, id)
		}
		rest = rest[4+n:]
	}
}

func sameSigs(a, b *Signatures) bool {
	for i := range a.Sig {
		if !bytes.Equal(a.Sig[i], b.Sig[i]) {
			return false
		}
	}
	return true
}
