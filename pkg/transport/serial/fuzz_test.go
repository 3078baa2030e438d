package serial

import (
	"bytes"
	"encoding/json"
	"hash/crc32"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/otactl/otactl/pkg/rpc/frame"
)

// fuzzMax is small so that short inputs reach the size limit.
const fuzzMax = 256

// FuzzDecoder feeds arbitrary streams to the Decoder. The seed corpus is in
// testdata/fuzz/FuzzDecoder. Invariants:
//   - no panic, whatever the input;
//   - the events do not depend on how the stream is cut into Feed calls;
//   - every frame passed on is a JSON object that was on the wire right
//     after a delimiter and either carries a matching CRC or has no
//     metadata and is valid JSON;
//   - after any stream and a line end, EncodeFrame of a JSON object fed in
//     arbitrary pieces yields that object exactly once, and nothing else.
func FuzzDecoder(f *testing.F) {
	f.Add([]byte("boot\r\n"+string(EncodeFrame([]byte(`{"id":1}`)))), `{"a":1}`, uint64(1))
	f.Fuzz(func(t *testing.T, stream []byte, msg string, seed uint64) {
		rng := rand.New(rand.NewPCG(seed, seed>>32|1))

		whole := runDecoder(stream, nil)
		chunked := runDecoder(stream, rng)
		if !reflect.DeepEqual(whole, chunked) {
			t.Fatalf("events depend on chunking:\nwhole   %v\nchunked %v", whole, chunked)
		}

		stripped := stripXONXOFF(stream)
		for _, e := range whole {
			if e.kind == "frame" {
				checkFrame(t, stripped, []byte(e.data))
			}
		}

		// Round trip after whatever the stream left behind.
		for _, js := range fuzzJSON(msg) {
			d, evs := recorder(fuzzMax)
			d.Feed(stream)
			d.Feed([]byte("\n"))
			n := len(*evs)
			enc := EncodeFrame(js)
			for len(enc) > 0 {
				k := 1 + rng.IntN(min(len(enc), 40))
				d.Feed(enc[:k])
				enc = enc[k:]
			}
			got := (*evs)[n:]
			if len(js) <= fuzzMax {
				if len(got) != 1 || got[0] != fr(string(js)) {
					t.Fatalf("EncodeFrame(%q) after the stream gave %v, want the frame once", js, got)
				}
			} else if len(got) != 1 || got[0].kind != "junk" {
				t.Fatalf("oversized EncodeFrame(%.40q) gave %v, want one junk line", js, got)
			}
		}
	})
}

// runDecoder decodes stream whole (rng nil) or in random pieces.
func runDecoder(stream []byte, rng *rand.Rand) []event {
	d, evs := recorder(fuzzMax)
	if rng == nil {
		d.Feed(stream)
	} else {
		for p := stream; len(p) > 0; {
			k := 1 + rng.IntN(min(len(p), 64))
			d.Feed(p[:k])
			p = p[k:]
		}
	}
	d.Flush()
	return *evs
}

func stripXONXOFF(b []byte) []byte {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c != XON && c != XOFF {
			out = append(out, c)
		}
	}
	return out
}

// checkFrame verifies that payload p occurs in the stream as a frame: after
// a delimiter, followed by a matching CRC, or by nothing and valid JSON.
func checkFrame(t *testing.T, stream, p []byte) {
	t.Helper()
	if len(p) == 0 || p[0] != '{' || p[len(p)-1] != '}' {
		t.Fatalf("frame %q is not a JSON object", p)
	}
	if len(p) > fuzzMax {
		t.Fatalf("frame of %d bytes passed a %d-byte limit", len(p), fuzzMax)
	}
	crc := crc32.ChecksumIEEE(p)
	for i := 0; i+len(p) <= len(stream); i++ {
		if !bytes.HasPrefix(stream[i:], p) {
			continue
		}
		if !(i >= 1 && stream[i-1] == '\n') && !(i >= 3 && string(stream[i-3:i]) == delimQuotes) {
			continue
		}
		rest := stream[i+len(p):]
		h := 0
		for h < len(rest) && h < 8 && isHex(rest[h]) {
			h++
		}
		if h > 0 {
			v, _ := parseHex32(rest[:h])
			if v == crc && h < len(rest) && (rest[h] == ',' || rest[h] == '"' || isSpace(rest[h])) {
				return
			}
			continue
		}
		j := 0
		for j < len(rest) && isSpace(rest[j]) && rest[j] != '\n' {
			j++
		}
		if j < len(rest) && (rest[j] == '\n' || bytes.HasPrefix(rest[j:], []byte(delimQuotes))) && json.Valid(p) {
			return
		}
	}
	t.Fatalf("frame %q was passed on but no occurrence in the stream carries a matching CRC (%08x) or is a valid legacy frame", p, crc)
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// fuzzJSON turns msg into JSON objects as a client would send them.
func fuzzJSON(msg string) [][]byte {
	b, _ := json.Marshal(map[string]string{"m": msg})
	out := [][]byte{frame.ASCII(b)}
	var buf bytes.Buffer
	if json.Compact(&buf, []byte(msg)) == nil && buf.Len() > 0 && buf.Bytes()[0] == '{' {
		out = append(out, buf.Bytes())
	}
	return out
}
