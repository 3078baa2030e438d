package emulator

import (
	"bytes"
	"fmt"
	"net/http"
	"strconv"
	"testing"
)

// A download that ends before the end of the archive (the server's
// Content-Length is shorter than the bundle, or a body delimited by the
// connection's close is cut short) is a failed download, "Update failed",
// as a real device reports a connection that closes before its update
// finished (docs/protocol.md, "Updating from a URL"): the bundle itself may be
// fine, so the device must not call it "Malformed archive (truncated)".
// The boot state is untouched and the device takes the next update. A
// push that ends its data early (OTA.End) is another matter: there the
// archive is truncated (push_test.go).
func TestDownloadEndingBeforeTheArchiveFailsTheDownload(t *testing.T) {
	for _, tc := range []struct {
		name  string
		serve func(w http.ResponseWriter, b []byte)
	}{
		{"Content-Length shorter than the bundle", func(w http.ResponseWriter, b []byte) {
			short := b[:len(b)-1000]
			w.Header().Set("Content-Length", strconv.Itoa(len(short)))
			w.Write(short)
		}},
		{"close-delimited body cut short", func(w http.ResponseWriter, b []byte) {
			conn, bw, err := w.(http.Hijacker).Hijack()
			if err != nil {
				t.Errorf("hijack: %v", err)
				return
			}
			defer conn.Close()
			fmt.Fprintf(bw, "HTTP/1.1 200 OK\r\nContent-Type: application/zip\r\nConnection: close\r\n\r\n")
			bw.Write(b[:len(b)/2])
			bw.Flush()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			b := makeBundle(t, fw{version: "2.0.0", app: bytes.Repeat([]byte("0123456789abcdef"), 8<<10)})
			e.setHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { tc.serve(w, b) }))
			_, err := e.call("OTA.Update", map[string]any{"url": e.srv.URL + "/fw.zip", "commit_timeout": 300})
			wantErr(t, err, -1, "Update failed")
			if st := e.otaStatus(); st["state"] != 2.0 || st["msg"] != "Update failed" {
				t.Fatalf("OTA.Status after the cut download: %v", st)
			}
			if bs := e.bootState(); bs != committed0 {
				t.Fatalf("boot state after the cut download: %+v", bs)
			}
			e.setHandler(nil)
			e.update(fw{version: "2.0.1"}, 300)
			if s := e.d.State(); s.Version != "2.0.1" {
				t.Fatalf("the next update: %+v", s)
			}
		})
	}
}

// The other side of the same rule: a body that goes on past the end of
// the archive, or whose connection closes short of its Content-Length only
// after the whole archive arrived, is a complete download: the device has
// every byte of the bundle, checked, and installs it.
func TestDownloadWithTheWholeArchiveInstallsIt(t *testing.T) {
	for _, tc := range []struct {
		name  string
		serve func(w http.ResponseWriter, b []byte)
	}{
		{"close-delimited body", func(w http.ResponseWriter, b []byte) {
			conn, bw, err := w.(http.Hijacker).Hijack()
			if err != nil {
				t.Errorf("hijack: %v", err)
				return
			}
			defer conn.Close()
			fmt.Fprintf(bw, "HTTP/1.1 200 OK\r\nContent-Type: application/zip\r\nConnection: close\r\n\r\n")
			bw.Write(b)
			bw.Flush()
		}},
		{"Content-Length longer than the bundle", func(w http.ResponseWriter, b []byte) {
			conn, bw, err := w.(http.Hijacker).Hijack()
			if err != nil {
				t.Errorf("hijack: %v", err)
				return
			}
			defer conn.Close()
			fmt.Fprintf(bw, "HTTP/1.1 200 OK\r\nContent-Type: application/zip\r\nContent-Length: %d\r\n\r\n", len(b)+1000)
			bw.Write(b)
			bw.Flush()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			b := makeBundle(t, fw{version: "2.0.0"})
			e.setHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { tc.serve(w, b) }))
			boots := e.d.State().Boots
			if _, err := e.call("OTA.Update", map[string]any{"url": e.srv.URL + "/fw.zip", "commit_timeout": 300}); err != nil {
				t.Fatalf("OTA.Update: %v", err)
			}
			if s := e.waitBoots(boots + 1); s.Version != "2.0.0" {
				t.Fatalf("after the update: %+v", s)
			}
		})
	}
}
