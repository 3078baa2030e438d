package ws

import (
	"bytes"
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
)

// replyTimeout bounds writing one reply; a client that does not read for
// that long is disconnected.
const replyTimeout = 10 * time.Second

// Handler is the device side of the WebSocket transport. It is an
// http.Handler that upgrades requests to WebSocket connections and serves a
// transport.Handler on them. Mount it on its own or, as on a real device,
// behind the HTTP transport's handler (httptransport.HandlerOptions.WebSocket)
// so that both share /rpc on one listener.
type Handler struct {
	h        transport.Handler
	opts     transport.Options
	max      int
	upgrader websocket.Upgrader

	mu    sync.Mutex
	conns map[*serverConn]struct{}
}

// serverConn is one accepted WebSocket connection.
type serverConn struct {
	ws     *websocket.Conn
	cancel context.CancelFunc
	wmu    sync.Mutex    // serialises replies
	done   chan struct{} // closed when the connection is fully torn down
}

// NewHandler returns the device side serving h. It upgrades with the
// clubby.cesanta.com subprotocol and accepts any Origin, as a device does.
// Each request frame runs in its own goroutine (a blocked OTA.Update does not
// stop other calls); replies are written one at a time, without a trailing
// newline, as a device sends them. A frame larger than opts.MaxFrameSize
// (default frame.MaxSize, a real device's rpc.max_frame_size) is dropped,
// and so is a message that is not a frame. A request without id gets no
// reply. Closing the connection cancels the ctx of its handlers, and the
// connection's teardown waits for them to return, so handlers must honour
// ctx.
func NewHandler(h transport.Handler, opts transport.Options) *Handler {
	max := opts.MaxFrameSize
	if max <= 0 {
		max = frame.MaxSize
	}
	return &Handler{
		h:    h,
		opts: opts,
		max:  max,
		upgrader: websocket.Upgrader{
			Subprotocols: []string{Subprotocol},
			// A device accepts any origin.
			CheckOrigin: func(*http.Request) bool { return true },
		},
		conns: map[*serverConn]struct{}{},
	}
}

// ServeHTTP upgrades the request and serves the connection until it closes.
func (s *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ws, err := s.upgrader.Upgrade(w, r, nil) // answers the client on failure
	if err != nil {
		s.logDebug("WebSocket upgrade failed", "remote", r.RemoteAddr, "err", err)
		return
	}
	// Bound what one message may cost; frames over the device limit are
	// dropped below, much larger messages break the connection.
	ws.SetReadLimit(int64(max(s.max*4, transport.DefaultMaxFrameSize)))

	ch := &transport.Channel{Type: transport.ChannelWS}
	if a, ok := s.h.(transport.HandshakeAuthenticator); ok {
		ch.User = a.AuthenticateHandshake(r.Method, r.URL.RequestURI(), r.Header.Get("Authorization"))
	}
	ctx, cancel := context.WithCancel(transport.WithChannel(r.Context(), ch))
	c := &serverConn{ws: ws, cancel: cancel, done: make(chan struct{})}
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.mu.Unlock()

	var handlers sync.WaitGroup
	defer func() {
		cancel()
		_ = ws.Close()
		handlers.Wait()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		close(c.done)
	}()

	for {
		typ, data, err := ws.ReadMessage()
		if err != nil {
			s.logDebug("WebSocket connection ended", "remote", r.RemoteAddr, "err", err)
			return
		}
		if typ != websocket.TextMessage && typ != websocket.BinaryMessage {
			continue
		}
		data = bytes.TrimSpace(data)
		if len(data) > s.max {
			s.logWarn("dropping a frame over the device's size limit", "size", len(data), "limit", s.max)
			continue
		}
		s.opts.DebugFrame("recv", data)
		req, err := frame.Parse(data)
		if err != nil {
			s.logWarn("dropping a WebSocket message that is not an RPC frame", "err", err)
			continue
		}
		handlers.Add(1)
		go func() {
			defer handlers.Done()
			s.handle(ctx, c, req)
		}()
	}
}

// handle runs one request and writes its reply.
func (s *Handler) handle(ctx context.Context, c *serverConn, req *frame.Frame) {
	ctx, replied := transport.WithReplyNotice(ctx)
	defer replied() // written, or given up on: see transport.AfterReply
	reply := s.h.HandleFrame(ctx, req)
	if reply == nil && transport.ChannelFrom(ctx).Aborted() {
		// The device went away while the call was in flight: its
		// connections break, as a real device's reboot breaks them.
		c.cancel()
		_ = c.ws.Close()
		return
	}
	if reply == nil || req.ID == 0 || ctx.Err() != nil {
		return
	}
	out, err := frame.Marshal(reply)
	if err != nil {
		s.logWarn("cannot encode reply frame", "err", err)
		return
	}
	s.opts.DebugFrame("send", out)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.ws.SetWriteDeadline(time.Now().Add(replyTimeout))
	if err := c.ws.WriteMessage(websocket.TextMessage, out); err != nil {
		s.logDebug("WebSocket reply failed, closing the connection", "err", err)
		c.cancel()
		_ = c.ws.Close()
	}
}

// CloseAll drops every open WebSocket connection, as a device does when it
// reboots, and waits until their handlers have returned. New connections
// are still accepted afterwards.
func (s *Handler) CloseAll() {
	s.mu.Lock()
	conns := make([]*serverConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.cancel()
		_ = c.ws.Close()
	}
	for _, c := range conns {
		<-c.done
	}
}

// NumConns returns the number of open WebSocket connections.
func (s *Handler) NumConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

func (s *Handler) logDebug(msg string, args ...any) {
	if s.opts.Logger != nil {
		s.opts.Logger.Debug(msg, append([]any{"transport", "ws"}, args...)...)
	}
}

func (s *Handler) logWarn(msg string, args ...any) {
	if s.opts.Logger != nil {
		s.opts.Logger.Warn(msg, append([]any{"transport", "ws"}, args...)...)
	}
}
