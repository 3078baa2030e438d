package serial

import (
	"encoding/json"
	"fmt"
	"hash/crc32"
	"reflect"
	"strings"
	"testing"

	"github.com/otactl/otactl/pkg/rpc/frame"
)

func TestEncodeFrameGolden(t *testing.T) {
	// The example of docs/protocol.md, "Serial", as mos writes it.
	in := `{"src":"mos","id":1711787588495,"method":"Sys.GetInfo","params":{"x":1}}`
	want := "\n\"\"\"" + in + "e866a350\"\"\"\n"
	if got := string(EncodeFrame([]byte(in))); got != want {
		t.Fatalf("EncodeFrame:\n got %q\nwant %q", got, want)
	}
	// The same request built as a frame encodes to exactly these bytes.
	b, err := frame.Marshal(&frame.Frame{Src: "mos", ID: 1711787588495, Method: "Sys.GetInfo", Params: json.RawMessage(`{"x":1}`)})
	if err != nil || string(EncodeFrame(b)) != want {
		t.Fatalf("EncodeFrame(frame.Marshal(...)) = %q (%v), want %q", EncodeFrame(b), err, want)
	}
	// Trailing white space is not part of the frame nor of its CRC.
	if got := string(EncodeFrame([]byte(in + " \r\n"))); got != want {
		t.Fatalf("EncodeFrame with trailing space:\n got %q\nwant %q", got, want)
	}
}

// event is one decoder callback, for comparing runs.
type event struct {
	kind string // frame, junk, hs, xon, xoff
	data string
}

func (e event) String() string { return fmt.Sprintf("%s(%q)", e.kind, e.data) }

func recorder(max int) (*Decoder, *[]event) {
	var evs []event
	d := &Decoder{
		MaxFrameSize: max,
		OnFrame:      func(b []byte) { evs = append(evs, event{"frame", string(b)}) },
		OnJunk:       func(l string) { evs = append(evs, event{"junk", l}) },
		OnHandshake:  func() { evs = append(evs, event{"hs", ""}) },
		OnFlow: func(p bool) {
			k := "xon"
			if p {
				k = "xoff"
			}
			evs = append(evs, event{k, ""})
		},
	}
	return d, &evs
}

func crcHex(s string) string { return fmt.Sprintf("%08x", crc32.ChecksumIEEE([]byte(s))) }

func fr(s string) event   { return event{"frame", s} }
func junk(s string) event { return event{"junk", s} }

var (
	hsEv   = event{"hs", ""}
	xonEv  = event{"xon", ""}
	xoffEv = event{"xoff", ""}
)

func TestDecoder(t *testing.T) {
	a := `{"id":1,"result":{"x":"y"}}`
	b := `{"id":2,"error":{"code":404,"message":"No handler for X"}}`
	tests := []struct {
		name string
		max  int
		in   string
		want []event
	}{
		{"one frame", 0, string(EncodeFrame([]byte(a))), []event{fr(a)}},
		{"two frames", 0, string(EncodeFrame([]byte(a))) + string(EncodeFrame([]byte(b))), []event{fr(a), fr(b)}},
		{"old firmware, back to back", 0, `"""` + a + crcHex(a) + `""""""` + b + crcHex(b) + `"""`, []event{fr(a), fr(b)}},
		{"closing delimiter opens the next frame", 0, `"""` + a + crcHex(a) + `"""` + b + crcHex(b) + `"""`, []event{fr(a), fr(b)}},
		{"newline framing", 0, "\n" + a + crcHex(a) + "\n", []event{fr(a)}},
		{"uppercase crc and more metadata", 0, "\n" + a + strings.ToUpper(crcHex(a)) + ",x,y\r\n", []event{fr(a)}},
		{"legacy frame without crc", 0, "\n" + a + "\r\n", []event{fr(a)}},
		{"legacy frame must be valid JSON", 0, "\n{not json}\n", []event{junk("{not json}")}},
		{"junk lines around a frame", 0,
			"I (123) boot: ESP-IDF v3.3\r\n[Nov 27 10:00:00.123] main.c:12 hello\n" + string(EncodeFrame([]byte(a))) + "tail line\n",
			[]event{junk("I (123) boot: ESP-IDF v3.3"), junk("[Nov 27 10:00:00.123] main.c:12 hello"), fr(a), junk("tail line")}},
		{"crc mismatch is junk", 0, "\n\"\"\"{\"id\":12}deadbeef\"\"\"\n", []event{junk(`"""{"id":12}deadbeef"""`)}},
		{"malformed metadata is junk", 0, "\n{\"id\":12}xyz\n", []event{junk(`{"id":12}xyz`)}},
		{"crc field too long is junk", 0, "\n" + a + "0" + crcHex(a) + "\n", []event{junk(a + "0" + crcHex(a))}},
		{"unterminated json is junk", 0, "\n{\"this\": \"looks like json but has no crc\"\n",
			[]event{junk(`{"this": "looks like json but has no crc"`)}},
		{"log line that is a JSON object is a legacy frame", 0, "\n{}\n", []event{fr("{}")}},
		{"brace not after a delimiter is junk", 0, "x{}\n", []event{junk("x{}")}},
		{"quotes in log output", 0, "say \"\"\"hi\"\"\" there\n", []event{junk(`say """hi""" there`)}},
		{"four quotes then brace is not a frame", 0, "\"\"\"\"{\"id\":1}\n", []event{junk(`""""{"id":1}`)}},
		{"six quotes then brace is a frame", 0, "\"\"\"\"\"\"" + a + crcHex(a) + "\"\"\"", []event{junk(`"""`), fr(a)}},
		{"junk and frame on one line", 0, "log text" + `"""` + a + crcHex(a) + `"""` + " more\n",
			[]event{junk("log text"), fr(a), junk(" more")}},
		{"binary noise", 0, "\x00\x01\x02 binary noise \xff\xfe\n", []event{junk("\x00\x01\x02 binary noise \xff\xfe")}},
		{"handshake reply", 0, "\"\"\"\x04\"\"\"", []event{hsEv}},
		{"handshake reply with newlines", 0, "\n\"\"\"\x04\"\"\"\n\n", []event{hsEv}},
		{"EOT with more is junk", 0, "\n\x04abc\n", []event{junk("\x04abc")}},
		{"xon xoff stripped anywhere", 0,
			"lo\x13g\n\"\"\"" + a[:5] + "\x11" + a[5:] + crcHex(a)[:3] + "\x13" + crcHex(a)[3:] + "\"\"\"\n",
			[]event{xoffEv, junk("log"), xonEv, xoffEv, fr(a)}},
		{"frame at the limit", len(a), string(EncodeFrame([]byte(a))), []event{fr(a)}},
		{"frame over the limit", len(a) - 1, string(EncodeFrame([]byte(a))) + "next\n",
			[]event{junk(fmt.Sprintf("%q... [%d-byte frame dropped: larger than the %d-byte limit]", a+crcHex(a), len(a)+8, len(a)-1)), junk("next")}},
		{"frame far over the limit", 10, "\n" + strings.Repeat("{", 500) + "\n" + string(EncodeFrame([]byte("{}"))),
			[]event{junk(fmt.Sprintf("%q... [500-byte frame dropped: larger than the 10-byte limit]", strings.Repeat("{", 10+metaSlack+1))), fr("{}")}},
		{"long junk line is split", 0, strings.Repeat("x", maxJunkLine+5) + "\n",
			[]event{junk(strings.Repeat("x", maxJunkLine)), junk("xxxxx")}},
		{"empty lines skipped", 0, "\n\r\n\n", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Whole, then byte by byte: the result must not depend on it.
			d, got := recorder(tc.max)
			d.Feed([]byte(tc.in))
			d.Flush()
			if !reflect.DeepEqual(*got, tc.want) {
				t.Fatalf("whole:\n got %v\nwant %v", *got, tc.want)
			}
			d2, got2 := recorder(tc.max)
			for i := 0; i < len(tc.in); i++ {
				d2.Feed([]byte{tc.in[i]})
			}
			d2.Flush()
			if !reflect.DeepEqual(*got2, tc.want) {
				t.Fatalf("byte by byte:\n got %v\nwant %v", *got2, tc.want)
			}
		})
	}
}

func TestDecoderSplitAcrossFeeds(t *testing.T) {
	a := `{"id":1,"result":"ok"}`
	stream := "boot line\r\n" + string(EncodeFrame([]byte(a))) + "\"\"\"\x04\"\"\"" + "after\n"
	want := []event{junk("boot line"), fr(a), hsEv, junk("after")}
	// Every split point in two, including inside both delimiters and the CRC.
	for i := 0; i <= len(stream); i++ {
		d, got := recorder(0)
		d.Feed([]byte(stream[:i]))
		d.Feed([]byte(stream[i:]))
		if !reflect.DeepEqual(*got, want) {
			t.Fatalf("split at %d (%q | %q):\n got %v\nwant %v", i, stream[:i], stream[i:], *got, want)
		}
	}
}

func TestDecoderPendingLineNeedsNewlineOrFlush(t *testing.T) {
	d, got := recorder(0)
	d.Feed([]byte("partial"))
	if len(*got) != 0 {
		t.Fatalf("a line without its end was emitted: %v", *got)
	}
	d.Feed([]byte(" line\n"))
	if want := []event{junk("partial line")}; !reflect.DeepEqual(*got, want) {
		t.Fatalf("got %v, want %v", *got, want)
	}
	// An unterminated frame at the end of the stream is junk.
	d.Feed([]byte("\n{\"id\":1}"))
	d.Flush()
	if want := []event{junk("partial line"), junk(`{"id":1}`)}; !reflect.DeepEqual(*got, want) {
		t.Fatalf("after flush got %v, want %v", *got, want)
	}
}

func TestDecoderMemoryBounded(t *testing.T) {
	d, got := recorder(100)
	chunk := []byte(strings.Repeat("{", 1000))
	d.Feed([]byte("\n"))
	for range 1000 {
		d.Feed(chunk)
	}
	if cap(d.buf) > 100+metaSlack+junkPreview+1024 {
		t.Fatalf("frame buffer grew to %d bytes for a 100-byte limit", cap(d.buf))
	}
	d.Feed([]byte("\n"))
	if len(*got) != 1 || !strings.Contains((*got)[0].data, "1000000-byte frame dropped") {
		t.Fatalf("got %v", *got)
	}
	// Junk without line ends is bounded too.
	for range 1000 {
		d.Feed([]byte(strings.Repeat("x", 1000)))
	}
	if cap(d.junk) > 2*maxJunkLine {
		t.Fatalf("junk buffer grew to %d bytes", cap(d.junk))
	}
}

// OnBadFrame sees only frame candidates delimited by `"""` on both ends:
// those are frames the device meant to send, damaged; anything cut short
// by a newline (a reset while writing) or not opened by `"""` is log output
// only.
func TestDecoderBadFrames(t *testing.T) {
	big := `{"id":5,"result":"` + strings.Repeat("A", 100) + `"}`
	for _, tc := range []struct {
		in   string
		want []string // candidate|reason
	}{
		{`"""{"id":1}deadbeef"""`, []string{`{"id":1}deadbeef|CRC mismatch`}},
		{`"""{"id":2}zz"""`, []string{`{"id":2}zz|malformed metadata`}},
		{`"""{"id":3,}"""`, []string{`{"id":3,}|invalid JSON without CRC`}},
		{"\"\"\"{\"id\":4,\"result\":1\n", nil}, // cut short by a newline
		{"\n{\"id\":4}deadbeef\n", nil},         // newline-delimited: log line
		{"\n{\"id\":4}deadbeef\"\"\"", nil},     // opened by a newline
		{`"""` + big + crcHex(big) + `"""`, []string{big[:junkPreview] + "|128 bytes, larger than the 60-byte limit"}},
		{"\"\"\"" + big + "\n", nil},                      // oversized, cut short
		{`"""{"id":6}` + crcHex(`{"id":6}`) + `"""`, nil}, // a good frame
	} {
		var got []string
		d := &Decoder{MaxFrameSize: 60, OnBadFrame: func(c []byte, reason string) { got = append(got, string(c)+"|"+reason) }}
		d.Feed([]byte(tc.in))
		d.Flush()
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%q: OnBadFrame got %q, want %q", tc.in, got, tc.want)
		}
	}
}
