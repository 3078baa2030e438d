package serial

import (
	"encoding/json"
	"fmt"
	"hash/crc32"

	"github.com/otactl/otactl/pkg/transport"
)

// Bytes with a meaning on the link.
const (
	// EOT (0x04) alone in a frame is the handshake: the host sends it until
	// the device echoes it back, which also turns off the device's
	// interactive console.
	EOT byte = 0x04
	// XON (0x11) lets the other end write again (software flow control).
	// It never occurs in JSON, so it is stripped wherever it is.
	XON byte = 0x11
	// XOFF (0x13) asks the other end to stop writing until XON.
	XOFF byte = 0x13
)

// delimQuotes is the old frame delimiter, still written around every frame
// so that both old and new firmware understand it.
const delimQuotes = `"""`

// Handshake is what the host writes, repeatedly, until the device answers
// with a frame that is exactly EOT.
const Handshake = delimQuotes + "\x04" + delimQuotes + "\n\n"

// handshakeReply is what a device answers to a handshake (rpc-uart writes
// the EOT frame with the old delimiter and nothing else).
const handshakeReply = delimQuotes + "\x04" + delimQuotes

// EncodeFrame returns json as it goes on the wire:
//
//	"\n" + `"""` + json + crc + `"""` + "\n"
//
// where json has its trailing white space removed and crc is the IEEE CRC-32
// of it as 8 lowercase hex digits. json must be one compact JSON object
// without raw newlines (frame.Marshal output), and should be ASCII only,
// because a real device discards its receive buffer on any byte >= 0x80.
func EncodeFrame(json []byte) []byte {
	json = trimRightSpace(json)
	out := make([]byte, 0, len(json)+2+2*len(delimQuotes)+8)
	out = append(out, '\n')
	out = append(out, delimQuotes...)
	out = append(out, json...)
	out = fmt.Appendf(out, "%08x", crc32.ChecksumIEEE(json))
	out = append(out, delimQuotes...)
	out = append(out, '\n')
	return out
}

// maxJunkLine bounds one device log line handed to OnJunk; a longer line is
// passed on in pieces of this size.
const maxJunkLine = 2048

// metaSlack is the room left after a frame's JSON for its metadata (the
// CRC and possibly more comma-separated fields) before the frame counts as
// too large.
const metaSlack = 64

// junkPreview is how much of a dropped frame is shown in its junk line.
const junkPreview = 80

type decState uint8

const (
	stJunk    decState = iota // between frames: device log output
	stFrame                   // inside a frame candidate
	stDiscard                 // inside a frame candidate that grew too large
)

// pending delimiter after the last byte processed (it opens a frame when
// the next byte is '{' or EOT).
type delimKind uint8

const (
	delimNone delimKind = iota
	// `"""` seen in log output: it is part of the log line unless a frame
	// follows.
	delimQuotesJunk
	// `"""` that closed a frame or a handshake: never part of a log line.
	delimQuotesSilent
	// "\n": ends the current log line.
	delimNewline
)

// Decoder splits the byte stream of a serial link into frames and device log
// lines, following the receive rules of mos (common/mgrpc/codec/stream.go)
// with these choices:
//
//   - A frame starts right after a delimiter (`"""` or "\n") that is
//     directly followed by '{' or EOT, and ends at the next `"""` or "\n".
//     The delimiter that ends a frame may also start the next one (mos
//     consumes it; accepting it too loses nothing, and keeps two frames
//     written back to back by old firmware).
//   - Trailing white space is trimmed. A frame that is exactly EOT is a
//     handshake (OnHandshake).
//   - Text after the last '}' is metadata: comma-separated fields, the first
//     the CRC-32 of the JSON in hex (1 to 8 digits, any case). A frame whose
//     CRC does not match or whose metadata is malformed is dropped and
//     passed to OnJunk as device output. (mos fails the whole call on
//     these; a device log line that happens to look like a frame must never
//     do that.)
//   - A frame without metadata is a legacy frame from firmware that does not
//     send CRCs; mos accepts it unchecked, and so does the Decoder, but only
//     if it is valid JSON (mos drops invalid JSON after parsing anyway).
//     Device log lines that are JSON objects therefore come out as frames,
//     exactly as in mos; the RPC layer ignores frames it did not ask for.
//   - A frame whose JSON exceeds MaxFrameSize is dropped (reported as one
//     junk line); memory is bounded by MaxFrameSize plus a little.
//   - XON and XOFF are removed from the stream wherever they occur and
//     reported to OnFlow.
//   - Everything else is device log output, passed to OnJunk one line at a
//     time (without the line end; empty lines are skipped; lines longer than
//     2048 bytes are split). It is never an error.
//
// Feed never panics and never fails. The result does not depend on how the
// stream is split into Feed calls. A Decoder is not safe for concurrent use.
type Decoder struct {
	// MaxFrameSize is the largest frame JSON accepted; zero means
	// transport.DefaultMaxFrameSize.
	MaxFrameSize int
	// OnFrame receives the JSON of each frame, metadata stripped. The slice
	// is valid only during the call.
	OnFrame func(json []byte)
	// OnJunk receives device log output, one line per call.
	OnJunk func(line string)
	// OnBadFrame, if set, also receives each frame candidate delimited by
	// `"""` on both ends that is dropped as log output (a bad CRC, malformed
	// metadata, invalid JSON, too large), with the reason; for a candidate
	// that was too large, only its first bytes. A candidate cut short by a
	// newline or the end of the stream (a device reset while it wrote) is
	// not passed. The slice is valid only during the call. The serial
	// client uses it to tell a damaged reply to a call in flight
	// (docs/transports.md).
	OnBadFrame func(candidate []byte, reason string)
	// OnHandshake is called for each EOT frame.
	OnHandshake func()
	// OnFlow is called with true on XOFF (stop writing) and false on XON.
	OnFlow func(paused bool)

	state   decState
	after   delimKind
	quotes  int  // consecutive '"' not yet classified (0..2)
	openedQ bool // the current frame candidate was opened by `"""`
	junk    []byte
	buf     []byte
	dropped int // bytes of the oversized frame seen so far
}

func (d *Decoder) maxFrame() int {
	if d.MaxFrameSize > 0 {
		return d.MaxFrameSize
	}
	return transport.DefaultMaxFrameSize
}

// Feed processes the next bytes of the stream, calling the handlers for
// every complete frame, log line and flow-control byte they contain.
func (d *Decoder) Feed(p []byte) {
	for _, c := range p {
		switch c {
		case XON:
			if d.OnFlow != nil {
				d.OnFlow(false)
			}
		case XOFF:
			if d.OnFlow != nil {
				d.OnFlow(true)
			}
		default:
			d.step(c)
		}
	}
}

// Flush ends the stream: a pending partial log line is passed to OnJunk,
// and a frame that never got its closing delimiter is dropped as junk. The
// Decoder is then ready for a new stream.
func (d *Decoder) Flush() {
	switch d.state {
	case stFrame:
		for ; d.quotes > 0; d.quotes-- {
			d.buf = append(d.buf, '"')
		}
		d.junkCandidate(d.buf, "unterminated frame")
	case stDiscard:
		d.dropped += d.quotes
		d.emitDropped(false)
	default:
		if d.after == delimQuotesJunk {
			d.addJunk([]byte(delimQuotes))
		}
		d.flushQuotesToJunk()
	}
	d.quotes = 0
	d.emitJunk()
	d.state = stJunk
	d.after = delimNone
	d.buf = d.buf[:0]
}

func (d *Decoder) step(c byte) {
	switch d.state {
	case stJunk:
		if kind := d.after; kind != delimNone {
			d.after = delimNone
			if c == '{' || c == EOT {
				d.emitJunk()
				d.state = stFrame
				d.openedQ = kind == delimQuotesJunk || kind == delimQuotesSilent
				d.buf = append(d.buf[:0], c)
				return
			}
			if kind == delimQuotesJunk {
				d.addJunk([]byte(delimQuotes))
			}
		}
		if c == '"' {
			d.quotes++
			if d.quotes == 3 {
				d.quotes = 0
				d.after = delimQuotesJunk
			}
			return
		}
		d.flushQuotesToJunk()
		if c == '\n' {
			d.emitJunk()
			d.after = delimNewline
			return
		}
		d.addJunkByte(c)

	case stFrame:
		if c == '"' {
			d.quotes++
			if d.quotes == 3 {
				d.quotes = 0
				d.endFrame(true)
			}
			return
		}
		for ; d.quotes > 0; d.quotes-- {
			d.buf = append(d.buf, '"')
		}
		if c == '\n' {
			d.endFrame(false)
			return
		}
		d.buf = append(d.buf, c)
		if len(d.buf) > d.maxFrame()+metaSlack {
			d.state = stDiscard
			d.dropped = len(d.buf)
			if len(d.buf) > junkPreview {
				d.buf = d.buf[:junkPreview]
			}
		}

	case stDiscard:
		if c == '"' {
			d.quotes++
			if d.quotes == 3 {
				d.quotes = 0
				d.emitDropped(true)
				d.state = stJunk
				d.after = delimQuotesSilent
			}
			return
		}
		d.dropped += d.quotes + 1
		d.quotes = 0
		if c == '\n' {
			d.dropped-- // the delimiter is not part of the frame
			d.emitDropped(false)
			d.state = stJunk
			d.after = delimNewline
		}
	}
}

// endFrame classifies the completed frame candidate in d.buf.
func (d *Decoder) endFrame(closedByQuotes bool) {
	d.state = stJunk
	content := d.buf
	t := trimRightSpace(content)
	if len(t) == 1 && t[0] == EOT {
		if d.OnHandshake != nil {
			d.OnHandshake()
		}
		d.closeAfter(closedByQuotes, true)
		return
	}
	payload, reason := d.check(t)
	if reason == "" {
		if d.OnFrame != nil {
			d.OnFrame(payload)
		}
		d.closeAfter(closedByQuotes, true)
		return
	}
	if reason == reasonTooLarge {
		d.dropped = len(content)
		if len(d.buf) > junkPreview {
			d.buf = d.buf[:junkPreview]
		}
		d.emitDropped(closedByQuotes)
		d.closeAfter(closedByQuotes, true)
		return
	}
	if d.OnBadFrame != nil && d.openedQ && closedByQuotes {
		d.OnBadFrame(content, reason)
	}
	d.junkCandidate(content, reason)
	d.closeAfter(closedByQuotes, false)
}

// closeAfter records the delimiter that closed a frame candidate. A `"""`
// that closed an accepted frame is not log output; one that closed a
// rejected candidate is shown as part of it.
func (d *Decoder) closeAfter(closedByQuotes, accepted bool) {
	switch {
	case !closedByQuotes:
		d.emitJunk()
		d.after = delimNewline
	case accepted:
		d.after = delimQuotesSilent
	default:
		d.after = delimQuotesJunk
	}
}

// junkCandidate passes a rejected frame candidate on as log output: the
// bytes as they were on the wire when short, a summary when long.
func (d *Decoder) junkCandidate(content []byte, reason string) {
	if len(content)+len(delimQuotes) > maxJunkLine {
		d.emitJunk()
		d.emitLine(fmt.Sprintf("%q... [%d-byte frame dropped: %s]", content[:junkPreview], len(content), reason))
		return
	}
	if d.openedQ {
		d.addJunk([]byte(delimQuotes))
	}
	d.addJunk(content)
}

const reasonTooLarge = "too large"

// check validates a trimmed frame candidate and returns its JSON, or the
// reason it is not a frame.
func (d *Decoder) check(t []byte) (payload []byte, reason string) {
	if len(t) == 0 || t[0] != '{' {
		return nil, "not a JSON object"
	}
	end := -1
	for i := len(t) - 1; i >= 0; i-- {
		if t[i] == '}' {
			end = i
			break
		}
	}
	if end < 0 {
		return nil, "no closing brace"
	}
	payload, meta := t[:end+1], t[end+1:]
	if len(payload) > d.maxFrame() {
		return nil, reasonTooLarge
	}
	if len(meta) == 0 {
		if !json.Valid(payload) {
			return nil, "invalid JSON without CRC"
		}
		return payload, ""
	}
	field := meta
	for i, c := range meta {
		if c == ',' {
			field = meta[:i]
			break
		}
	}
	want, ok := parseHex32(field)
	if !ok {
		return nil, "malformed metadata"
	}
	if crc32.ChecksumIEEE(payload) != want {
		return nil, "CRC mismatch"
	}
	return payload, ""
}

// parseHex32 parses 1 to 8 hex digits.
func parseHex32(b []byte) (uint32, bool) {
	if len(b) == 0 || len(b) > 8 {
		return 0, false
	}
	var v uint32
	for _, c := range b {
		var n byte
		switch {
		case c >= '0' && c <= '9':
			n = c - '0'
		case c >= 'a' && c <= 'f':
			n = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			n = c - 'A' + 10
		default:
			return 0, false
		}
		v = v<<4 | uint32(n)
	}
	return v, true
}

// emitDropped reports an oversized frame candidate; quoted says it was
// opened and closed by `"""`, so it is a whole frame, not one cut short.
func (d *Decoder) emitDropped(quoted bool) {
	if quoted && d.openedQ && d.OnBadFrame != nil {
		d.OnBadFrame(d.buf, fmt.Sprintf("%d bytes, larger than the %d-byte limit", d.dropped, d.maxFrame()))
	}
	d.emitLine(fmt.Sprintf("%q... [%d-byte frame dropped: larger than the %d-byte limit]",
		d.buf, d.dropped, d.maxFrame()))
	d.dropped = 0
}

func (d *Decoder) flushQuotesToJunk() {
	for ; d.quotes > 0; d.quotes-- {
		d.addJunkByte('"')
	}
}

func (d *Decoder) addJunk(b []byte) {
	for _, c := range b {
		d.addJunkByte(c)
	}
}

func (d *Decoder) addJunkByte(c byte) {
	d.junk = append(d.junk, c)
	if len(d.junk) >= maxJunkLine {
		d.emitJunk()
	}
}

// emitJunk passes the pending log line on, if any.
func (d *Decoder) emitJunk() {
	line := d.junk
	d.junk = d.junk[:0]
	for len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	if len(line) > 0 {
		d.emitLine(string(line))
	}
}

func (d *Decoder) emitLine(s string) {
	if d.OnJunk != nil {
		d.OnJunk(s)
	}
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f'
}

func trimRightSpace(b []byte) []byte {
	for len(b) > 0 && isSpace(b[len(b)-1]) {
		b = b[:len(b)-1]
	}
	return b
}
