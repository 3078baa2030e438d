package serial

import (
	"context"
	"io"
	"sync"

	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
)

// Server is the device end of a serial link, behaving like the rpc-uart
// library of Mongoose OS firmware.
type Server struct {
	rwc  io.ReadWriteCloser
	h    transport.Handler
	opts transport.Options

	ctx    context.Context // cancelled by Close and when the link ends
	cancel context.CancelFunc
	wg     sync.WaitGroup
	done   chan struct{}

	writeMu sync.Mutex
	gate    *flowGate

	closeOnce sync.Once
	closeErr  error
}

// Serve runs the device side of the serial protocol on rwc (the master end
// of a pty from OpenPTY, or a real port) until ctx ends, Close is called, or
// reading rwc fails. It answers each handshake with an EOT frame, decodes
// frames with the same Decoder as the client, drops frames larger than
// opts.MaxFrameSize (default frame.MaxSize, as a real device does), and
// calls h.HandleFrame in a goroutine per request, so a request that blocks
// (OTA.Update) does not hold up others. Replies are written with
// EncodeFrame. XON/XOFF from the host pause and resume the device's output.
// The Server owns rwc and closes it; call Close to release it and wait for
// the Server's goroutines, also after ctx ended.
func Serve(ctx context.Context, rwc io.ReadWriteCloser, h transport.Handler, opts transport.Options) *Server {
	if opts.MaxFrameSize <= 0 {
		opts.MaxFrameSize = frame.MaxSize
	}
	sctx, cancel := context.WithCancel(transport.WithChannel(ctx, &transport.Channel{Type: transport.ChannelUART}))
	s := &Server{
		rwc:    rwc,
		h:      h,
		opts:   opts,
		ctx:    sctx,
		cancel: cancel,
		done:   make(chan struct{}),
		gate:   newFlowGate(),
	}
	s.wg.Add(2)
	go s.readLoop()
	go func() {
		defer s.wg.Done()
		select {
		case <-sctx.Done():
			// ctx ended or Close was called: unblock the reader.
			s.closeLink()
		case <-s.done:
		}
	}()
	return s
}

func (s *Server) readLoop() {
	defer s.wg.Done()
	defer close(s.done)
	defer s.cancel()
	dec := &Decoder{
		MaxFrameSize: s.opts.MaxFrameSize,
		OnFrame:      s.onFrame,
		OnJunk: func(line string) {
			if s.opts.Logger != nil {
				s.opts.Logger.Debug("serial device: ignoring input", "line", line)
			}
		},
		OnHandshake: func() {
			// Answered at once, even under XOFF, as the firmware does.
			s.write([]byte(handshakeReply), false)
		},
		OnFlow: s.gate.set,
	}
	buf := make([]byte, 4096)
	for {
		n, err := s.rwc.Read(buf)
		if n > 0 {
			dec.Feed(buf[:n])
		}
		if err != nil {
			if s.opts.Logger != nil && s.ctx.Err() == nil {
				s.opts.Logger.Debug("serial device: link ended", "err", err)
			}
			return
		}
		if n == 0 && s.ctx.Err() != nil {
			return
		}
	}
}

func (s *Server) onFrame(data []byte) {
	s.opts.DebugFrame("recv", data)
	req, err := frame.Parse(data)
	if err != nil {
		if s.opts.Logger != nil {
			s.opts.Logger.Debug("serial device: dropping unparsable frame", "err", err)
		}
		return
	}
	// The reader is itself counted in wg, so this Add cannot race with Wait
	// returning.
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ctx, replied := transport.WithReplyNotice(s.ctx)
		defer replied() // written, or given up on: see transport.AfterReply
		resp := s.h.HandleFrame(ctx, req)
		if resp == nil || s.ctx.Err() != nil {
			return
		}
		b, err := frame.Marshal(resp)
		if err != nil {
			if s.opts.Logger != nil {
				s.opts.Logger.Error("serial device: cannot encode reply", "err", err)
			}
			return
		}
		s.opts.DebugFrame("send", b)
		s.write(EncodeFrame(b), true)
	}()
}

// write writes b whole under the write lock, after XON if obeyFlow, unless
// the server is closing. The lock is not held while waiting for XON: the
// reader answers handshakes through write, and must stay free to read the
// XON.
func (s *Server) write(b []byte, obeyFlow bool) {
	for {
		if obeyFlow {
			select {
			case <-s.gate.ready():
			case <-s.ctx.Done():
				return
			}
		}
		s.writeMu.Lock()
		if !obeyFlow || !s.gate.paused() {
			break
		}
		s.writeMu.Unlock() // XOFF came again meanwhile
	}
	defer s.writeMu.Unlock()
	if s.ctx.Err() != nil {
		return
	}
	if _, err := s.rwc.Write(b); err != nil && s.opts.Logger != nil && s.ctx.Err() == nil {
		s.opts.Logger.Debug("serial device: write failed", "err", err)
	}
}

// Log writes a device log line on the link between frames, the way firmware
// logs on its UART. A trailing line end is added if missing. XON and XOFF
// bytes are removed from it, so a log line cannot stall the host. Like any
// device output it waits while the host holds output off with XOFF (at most
// until Close).
func (s *Server) Log(line string) {
	b := make([]byte, 0, len(line)+1)
	for i := 0; i < len(line); i++ {
		if c := line[i]; c != XON && c != XOFF {
			b = append(b, c)
		}
	}
	if len(b) == 0 || b[len(b)-1] != '\n' {
		b = append(b, '\n')
	}
	s.write(b, true)
}

// Paused reports whether the host holds the device's output off (XOFF
// without XON yet): Log and replies wait until it lets go.
func (s *Server) Paused() bool { return s.gate.paused() }

// Done is closed when the link ends: Close was called, the Serve ctx ended,
// or reading failed.
func (s *Server) Done() <-chan struct{} { return s.done }

func (s *Server) closeLink() {
	s.closeOnce.Do(func() {
		s.cancel()
		s.closeErr = s.rwc.Close()
	})
}

// Close stops the server: handlers in flight see their ctx cancelled, rwc is
// closed, and Close waits for every goroutine of the server to return. It is
// idempotent.
func (s *Server) Close() error {
	s.closeLink()
	s.wg.Wait()
	return s.closeErr
}
