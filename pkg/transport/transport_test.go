package transport

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestDebugFrameCutsLongFrames(t *testing.T) {
	var buf bytes.Buffer
	o := Options{Logger: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	o.DebugFrame("send", []byte(`{"id":1}`))
	o.DebugFrame("send", []byte(strings.Repeat("A", 4000)))
	out := buf.String()
	if !strings.Contains(out, `{\"id\":1}`) {
		t.Fatalf("short frame not logged whole: %s", out)
	}
	if strings.Contains(out, strings.Repeat("A", DebugFrameMax+1)) || !strings.Contains(out, "(4000 bytes)") {
		t.Fatalf("long frame not cut: %.500s", out)
	}
	Options{}.DebugFrame("send", []byte("x")) // no logger: no panic
}

// A logger that does not log debug messages (otactl without --verbose, the
// emulator's host) costs a frame nothing: no copy, no redaction.
func TestDebugFrameDisabledCostsNothing(t *testing.T) {
	var buf bytes.Buffer
	o := Options{Logger: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))}
	data := []byte(`{"id":1,"src":"otactl","method":"Sys.GetInfo","auth":{"realm":"r","username":"u"}}`)
	if n := testing.AllocsPerRun(100, func() { o.DebugFrame("send", data) }); n != 0 {
		t.Errorf("DebugFrame at a disabled level allocates %v times a frame", n)
	}
	if buf.Len() != 0 {
		t.Errorf("logged at a disabled level: %s", buf.String())
	}
}
