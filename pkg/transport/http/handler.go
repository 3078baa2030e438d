package httptransport

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"

	"github.com/gorilla/websocket"

	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
)

// HandlerOptions configure the device side.
type HandlerOptions struct {
	// WebSocket, when set, serves requests on /rpc that ask for a WebSocket
	// upgrade, so that HTTP and WebSocket share one listener as on a real
	// device. When nil, such requests get 503 "WS is disabled", as a device
	// built without the WebSocket channel answers.
	WebSocket http.Handler
	// MaxFrameSize is the largest request frame (or argument body) accepted;
	// larger ones are refused with 413. Zero means frame.MaxSize, a real
	// device's default rpc.max_frame_size.
	MaxFrameSize int
	// Logger receives diagnostics (frames at debug level). Nil means none.
	Logger *slog.Logger
	// Path is where the RPC endpoint is: Path and Path/<Method>. Empty
	// means DefaultPath, "/rpc", a device's. An emulator that hosts many
	// devices on one listener serves each at "/<id>/rpc".
	Path string
}

// Handler is the device side of the HTTP transport; see NewHandler.
type Handler struct {
	h      transport.Handler
	opts   HandlerOptions
	max    int
	path   string
	nextID atomic.Int64 // ids of frames built for /rpc/<Method> calls
}

// NewHandler returns the device side of the HTTP transport, serving h the
// way a Mongoose OS device does (rpc-common mgos_rpc.c and
// mg_rpc_channel_http.c):
//
//   - POST /rpc: the body is a whole request frame; the answer is HTTP 200
//     with the whole reply frame (RPC errors travel inside it). A request
//     without id still runs; its answer is an empty 200.
//   - POST /rpc/<Method> (GET too, with arguments from the query string):
//     the body holds only the arguments (empty = none); the answer is the
//     bare result JSON with 200. An RPC error answers with the error object
//     {"code":N,"message":"…"} as body and status 403 for code 403, 404 for
//     code 404 and 500 for any other code, exactly as a device maps them.
//     (A device also treats an error object with code 0 as a failure; here
//     code 0 is success, as everywhere else in the protocol.)
//   - A request the device went away from (h aborted its channel,
//     transport.Channel.Abort) gets no answer: its connection is closed.
//   - OPTIONS on either: 200 with the CORS headers a device sends.
//   - A WebSocket upgrade on /rpc goes to opts.WebSocket.
//
// Bodies larger than the frame limit get 413, a malformed frame 400.
// Replies are ASCII-only JSON followed by "\r\n" like a device's, with
// Content-Type application/json and the device's CORS headers. The handler
// runs under the request's context, so a client that disconnects cancels
// it.
func NewHandler(h transport.Handler, opts HandlerOptions) http.Handler {
	max := opts.MaxFrameSize
	if max <= 0 {
		max = frame.MaxSize
	}
	path := opts.Path
	if path == "" {
		path = DefaultPath
	}
	return &Handler{h: h, opts: opts, max: max, path: strings.TrimSuffix(path, "/")}
}

// ServeHTTP implements http.Handler.
func (s *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	var method string
	switch {
	case p == s.path || p == s.path+"/":
	case strings.HasPrefix(p, s.path+"/"):
		method = p[len(s.path)+1:]
	default:
		http.Error(w, "Not Found: the RPC endpoint is "+s.path, http.StatusNotFound)
		return
	}

	if websocket.IsWebSocketUpgrade(r) {
		if s.opts.WebSocket == nil {
			http.Error(w, "WS is disabled", http.StatusServiceUnavailable)
			return
		}
		s.opts.WebSocket.ServeHTTP(w, r)
		return
	}

	setDeviceHeaders(w.Header())
	if r.Method == http.MethodOptions {
		// CORS preflight, answered as a device does.
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(http.StatusOK)
		return
	}
	allowed := r.Method == http.MethodPost || (method != "" && r.Method == http.MethodGet)
	if !allowed {
		w.Header().Set("Allow", "POST, OPTIONS")
		http.Error(w, "Method Not Allowed: POST the RPC frame to "+s.path, http.StatusMethodNotAllowed)
		return
	}

	body, ok := s.readBody(w, r)
	if !ok {
		return
	}
	if method == "" {
		s.serveFrame(w, r, body)
		return
	}
	s.serveMethod(w, r, method, body)
}

// setDeviceHeaders sets the headers a device sends with every RPC answer.
func setDeviceHeaders(h http.Header) {
	h.Set("Content-Type", "application/json")
	h.Set("Access-Control-Allow-Origin", "*")
	h.Set("Access-Control-Allow-Headers", "*")
}

// readBody reads the request body, refusing one over the frame limit with
// 413. Trailing white space (mos ends frames with "\n") does not count.
func (s *Handler) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	const slack = 64 // room for trailing white space
	if r.ContentLength > int64(s.max+slack) {
		s.refuseTooLarge(w)
		return nil, false
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, int64(s.max+slack)+1))
	if err != nil {
		http.Error(w, "Invalid request", http.StatusBadRequest)
		return nil, false
	}
	data = bytes.TrimSpace(data)
	if len(data) > s.max {
		s.refuseTooLarge(w)
		return nil, false
	}
	return data, true
}

func (s *Handler) refuseTooLarge(w http.ResponseWriter) {
	w.Header().Set("Connection", "close")
	http.Error(w, fmt.Sprintf("Request Entity Too Large: frames are limited to %d bytes", s.max), http.StatusRequestEntityTooLarge)
}

// serveFrame answers POST /rpc.
func (s *Handler) serveFrame(w http.ResponseWriter, r *http.Request, body []byte) {
	s.debug("recv", body)
	req, err := frame.Parse(body)
	if err != nil {
		// A device closes the channel with 400 "Invalid request".
		http.Error(w, "Invalid request", http.StatusBadRequest)
		return
	}
	ch := httpChannel(r)
	// The reply counts as sent once writeBody flushed it (or the handler
	// gave up on it): see transport.AfterReply.
	ctx, replied := transport.WithReplyNotice(transport.WithChannel(r.Context(), ch))
	defer replied()
	reply := s.h.HandleFrame(ctx, req)
	abortIfAborted(ch, reply)
	if s.challenged(w, ch) {
		return
	}
	if reply == nil || req.ID == 0 {
		// No reply, and never one to a request without id.
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(http.StatusOK)
		return
	}
	out, err := frame.Marshal(reply)
	if err != nil {
		http.Error(w, "cannot encode reply frame", http.StatusInternalServerError)
		return
	}
	s.debug("send", out)
	writeBody(w, http.StatusOK, out)
}

// serveMethod answers /rpc/<Method> with bare arguments in and the bare
// result (or error object) out.
func (s *Handler) serveMethod(w http.ResponseWriter, r *http.Request, method string, body []byte) {
	var args json.RawMessage
	switch {
	case len(body) > 0:
		if !json.Valid(body) {
			http.Error(w, "Invalid request: the body must be the JSON arguments of "+method, http.StatusBadRequest)
			return
		}
		args = body
	case r.Method == http.MethodGet && r.URL.RawQuery != "":
		a, err := queryArgs(r.URL.RawQuery)
		if err != nil {
			http.Error(w, "Invalid request: bad query string", http.StatusBadRequest)
			return
		}
		args = a
	}
	req := &frame.Frame{ID: s.nextID.Add(1), Method: method, Params: args}
	if b, err := frame.Marshal(req); err == nil {
		s.debug("recv", b)
	}
	ch := httpChannel(r)
	// The reply counts as sent once writeBody flushed it (or the handler
	// gave up on it): see transport.AfterReply.
	ctx, replied := transport.WithReplyNotice(transport.WithChannel(r.Context(), ch))
	defer replied()
	reply := s.h.HandleFrame(ctx, req)
	abortIfAborted(ch, reply)
	if s.challenged(w, ch) {
		return
	}
	if reply == nil {
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(http.StatusOK)
		return
	}
	if reply.Error != nil && reply.Error.Code != 0 {
		status := http.StatusInternalServerError
		switch reply.Error.Code {
		case http.StatusForbidden, http.StatusNotFound:
			status = reply.Error.Code
		}
		eb, err := json.Marshal(reply.Error)
		if err != nil {
			http.Error(w, "cannot encode error", http.StatusInternalServerError)
			return
		}
		eb = frame.ASCII(eb)
		s.debug("send", eb)
		writeBody(w, status, eb)
		return
	}
	// A reply without result (a device's mg_rpc_send_responsef(ri, NULL))
	// gives an empty body, as on a device.
	out := frame.ASCII(reply.Result)
	s.debug("send", out)
	writeBody(w, http.StatusOK, out)
}

// queryArgs builds an arguments object from a query string the way a device
// does for GET /rpc/<Method>?k=v: a value that is valid JSON is used as is
// (x=1 gives {"x":1}), any other value becomes a string.
func queryArgs(raw string) (json.RawMessage, error) {
	var buf bytes.Buffer
	buf.WriteByte('{')
	first := true
	for part := range strings.SplitSeq(raw, "&") {
		if part == "" {
			continue
		}
		k, v, _ := strings.Cut(part, "=")
		k, err := url.QueryUnescape(k)
		if err != nil {
			return nil, err
		}
		v, err = url.QueryUnescape(v)
		if err != nil {
			return nil, err
		}
		kb, _ := json.Marshal(k)
		vb := []byte(v)
		if !json.Valid(vb) {
			vb, _ = json.Marshal(v)
		}
		if !first {
			buf.WriteByte(',')
		}
		first = false
		buf.Write(kb)
		buf.WriteByte(':')
		buf.Write(vb)
	}
	buf.WriteByte('}')
	return frame.ASCII(buf.Bytes()), nil
}

// abortIfAborted breaks the connection of a request the device went away
// from (transport.Channel.Abort: a reboot or a power cut while the call was
// in flight): net/http closes it without writing anything, so the client
// sees the connection end (EOF) at once, as when a real device reboots. An
// empty 200 would instead read as "no answer" and leave the client waiting
// for its timeout.
func abortIfAborted(ch *transport.Channel, reply *frame.Frame) {
	if reply == nil && ch.Aborted() {
		panic(http.ErrAbortHandler)
	}
}

// httpChannel describes the request for the handler's authorisation check
// (docs/security.md): an HTTP channel with the request's method, URI and
// Authorization header.
func httpChannel(r *http.Request) *transport.Channel {
	return &transport.Channel{Type: transport.ChannelHTTP, HTTPMethod: r.Method, HTTPURI: r.URL.RequestURI(),
		Authorization: r.Header.Get("Authorization")}
}

// challenged answers "401 Unauthorized" with the WWW-Authenticate value the
// handler set on ch, as a device's HTTP channel does (headers as a device
// sends them, no body, and the connection closed), and reports whether it
// did.
func (s *Handler) challenged(w http.ResponseWriter, ch *transport.Channel) bool {
	www, ok := ch.Challenged()
	if !ok {
		return false
	}
	h := w.Header()
	h.Set("WWW-Authenticate", www)
	h.Set("Content-Length", "0")
	h.Set("Connection", "close")
	w.WriteHeader(http.StatusUnauthorized)
	s.debug("send", []byte("HTTP 401 WWW-Authenticate: "+www))
	return true
}

// writeBody writes body followed by "\r\n", as a device does.
func writeBody(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Length", fmt.Sprint(len(body)+2))
	w.WriteHeader(status)
	_, _ = w.Write(body)
	_, _ = w.Write([]byte("\r\n"))
	// On the connection now, not in the server's buffer: a device that
	// reboots right after its reply (transport.AfterReply) must not cut it.
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *Handler) debug(dir string, data []byte) {
	if s.opts.Logger != nil {
		s.opts.Logger.Debug("frame", "transport", "http", "dir", dir, "data", transport.RedactAuth(string(data)))
	}
}
