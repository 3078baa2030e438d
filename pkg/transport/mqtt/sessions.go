package mqtt

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"time"

	"github.com/otactl/otactl/pkg/transport"
)

// Defaults of SessionsOptions.
const (
	// DefaultLinger is how long a session stays connected after its last
	// connection closed. It outlasts the gaps of the workflows that close
	// a device's connection and dial it again: the outcome wait between
	// attempts (at most its 5 s backoff), a push regaining a lost link.
	DefaultLinger = 30 * time.Second
	// DefaultHoldOffMin and DefaultHoldOffMax bound how long dials fail
	// at once with the error of a failed connect to a broker, doubling
	// from the first to the second while connects keep failing.
	DefaultHoldOffMin = 250 * time.Millisecond
	DefaultHoldOffMax = 5 * time.Second
)

// SessionsOptions configure a Sessions. Zero values mean defaults.
type SessionsOptions struct {
	// Linger is how long a session stays connected after its last
	// connection closed, for the next dial to reuse it (default
	// DefaultLinger; negative: it disconnects at once).
	Linger time.Duration
	// HoldOffMin and HoldOffMax bound the time after a failed connect to
	// a broker during which dials to it fail at once with that connect's
	// error instead of connecting again, so that many devices' re-dials
	// after a broker outage make one connect attempt per hold-off, not one
	// each. The hold-off starts at HoldOffMin and doubles up to HoldOffMax
	// while connects keep failing; a connect that succeeds resets it. A
	// connect ended by its dial's ctx does not count.
	HoldOffMin, HoldOffMax time.Duration
	// AfterFunc runs f after d and returns a function that stops it (as
	// time.AfterFunc(d, f).Stop); tests drive the linger with it. Default:
	// time.AfterFunc.
	AfterFunc func(d time.Duration, f func()) (stop func() bool)
	// Now tells the time for the hold-off. Default: time.Now.
	Now func() time.Time
}

func (o SessionsOptions) withDefaults() SessionsOptions {
	if o.Linger == 0 {
		o.Linger = DefaultLinger
	}
	if o.HoldOffMin <= 0 {
		o.HoldOffMin = DefaultHoldOffMin
	}
	if o.HoldOffMax < o.HoldOffMin {
		o.HoldOffMax = max(DefaultHoldOffMax, o.HoldOffMin)
	}
	if o.AfterFunc == nil {
		o.AfterFunc = func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Sessions shares MQTT broker connections between the devices dialled
// through it: every Dial to the same broker, with the same broker
// credentials, client id option and *tls.Config, goes over one client
// connection (one client id), on which each device's reply topic is
// subscribed once (docs/transports.md, "One broker connection for many
// devices"). A process makes one Sessions (transport/all's
// NewSharedRegistry does) and closes it when it is done.
//
// The connections it returns behave as Dial's, one device each: Send,
// Recv, Close, ErrClosed, an answer that is not an RPC frame or a second
// device answering reaches only the connection to the device it came
// from. Closing one leaves the others alone; the broker connection ends
// Linger after the last one closed, when it is lost (every connection
// on it then reports the loss, as Dial's does, and the next dials share a
// new broker connection), or with Close.
type Sessions struct {
	opts SessionsOptions

	mu      sync.Mutex
	closed  bool
	byKey   map[sessionKey]*brokerSession // the session new dials join
	live    map[*brokerSession]struct{}   // every session not shut down yet
	holdoff map[sessionKey]*holdOff       // failed connects
	stats   SessionStats
}

// holdOff is a broker whose last connect failed.
type holdOff struct {
	err   error
	until time.Time
	delay time.Duration // of the next failure
}

// SessionStats count what a Sessions did.
type SessionStats struct {
	// Open is how many broker connections are open now, in use or
	// lingering.
	Open int
	// Peak is the most broker connections that were open at once.
	Peak int
	// Connects is how many broker connections were opened (connects that
	// succeeded).
	Connects int
	// Devices is how many device reply topics the open broker connections
	// have subscribed.
	Devices int
	// Subscribes is how many SUBSCRIBE packets the open broker connections
	// sent (each for up to 8 devices' reply topics).
	Subscribes int
}

// NewSessions returns an empty pool of sessions configured by opts.
func NewSessions(opts SessionsOptions) *Sessions {
	return &Sessions{
		opts:    opts.withDefaults(),
		byKey:   map[sessionKey]*brokerSession{},
		live:    map[*brokerSession]struct{}{},
		holdoff: map[sessionKey]*holdOff{},
	}
}

// Stats returns the pool's counts.
func (p *Sessions) Stats() SessionStats {
	p.mu.Lock()
	st := p.stats
	live := make([]*brokerSession, 0, len(p.live))
	for s := range p.live {
		if s.open {
			live = append(live, s)
		}
	}
	p.mu.Unlock()
	for _, s := range live {
		d, subs := s.counts()
		st.Devices += d
		st.Subscribes += subs
	}
	return st
}

// Dial returns a connection to the device named by u
// (mqtt://[user:pass@]broker[:port]/<device_id>, mqtts://…) over the
// session for its broker: it joins an open or lingering one, waits for
// one that is connecting, or connects a new one; then it subscribes to
// the device's reply topic, unless it is already. It returns once replies
// can arrive. ctx bounds the whole dial; the URL, options and errors are
// as for Dial. Dial is a transport.DialFunc.
func (p *Sessions) Dial(ctx context.Context, u *url.URL, opts transport.Options) (transport.Conn, error) {
	d, err := parseDial(u, opts)
	if err != nil {
		return nil, err
	}
	for {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("connect to MQTT broker %s: %w", transport.Redact(u), err)
		}
		s, opener, err := p.acquire(d, opts)
		if err != nil {
			return nil, err
		}
		if opener {
			err := s.connect(ctx)
			if err != nil && s.abortCtx.Err() != nil {
				err = fmt.Errorf("MQTT sessions: %w", transport.ErrClosed)
			}
			p.connected(s, err, ctx.Err() != nil)
		} else {
			select {
			case <-s.ready:
			case <-ctx.Done():
				p.release(s)
				return nil, fmt.Errorf("connect to MQTT broker %s: %w", transport.Redact(u), ctx.Err())
			}
		}
		if s.connErr != nil {
			p.release(s)
			if !opener && s.ctxErr && ctx.Err() == nil {
				// The dial that was connecting gave up; this one has
				// time left: connect again.
				continue
			}
			return nil, s.connErr
		}
		c, err := s.attach(ctx, u, d.deviceID, opts)
		if err != nil {
			p.release(s)
			return nil, err
		}
		return c, nil
	}
}

// acquire returns the session for d with a reference taken, and whether
// the caller must connect it.
func (p *Sessions) acquire(d dialTarget, opts transport.Options) (s *brokerSession, opener bool, err error) {
	key := keyOf(d, opts)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, false, fmt.Errorf("MQTT sessions: %w", transport.ErrClosed)
	}
	if s := p.byKey[key]; s != nil && !s.closing {
		s.refs++
		s.lingerGen++
		if s.stopLinger != nil {
			s.stopLinger()
			s.stopLinger = nil
		}
		return s, false, nil
	}
	if h := p.holdoff[key]; h != nil && p.opts.Now().Before(h.until) {
		return nil, false, h.err
	}
	s = newSession(p, d, opts)
	s.refs = 1
	p.byKey[key] = s
	p.live[s] = struct{}{}
	return s, true, nil
}

// connected records the result of the opener's connect.
func (p *Sessions) connected(s *brokerSession, err error, ctxErr bool) {
	p.mu.Lock()
	if err != nil {
		s.failed = true
		if p.byKey[s.key] == s {
			delete(p.byKey, s.key)
		}
		if !ctxErr && !errors.Is(err, transport.ErrClosed) {
			h := p.holdoff[s.key]
			if h == nil {
				h = &holdOff{delay: p.opts.HoldOffMin}
				p.holdoff[s.key] = h
			}
			h.err, h.until = err, p.opts.Now().Add(h.delay)
			h.delay = min(2*h.delay, p.opts.HoldOffMax)
		}
	} else {
		delete(p.holdoff, s.key)
		s.open = true
		p.stats.Open++
		p.stats.Connects++
		p.stats.Peak = max(p.stats.Peak, p.stats.Open)
	}
	p.mu.Unlock()
	s.connected(err, ctxErr)
}

// forget takes a session whose broker connection was lost out of reach of
// new dials; it ends once its connections are closed.
func (p *Sessions) forget(s *brokerSession) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.byKey[s.key] == s {
		delete(p.byKey, s.key)
	}
	if s.stopLinger != nil && s.refs == 0 && !s.closing {
		// Lingering: nothing left to wait for.
		s.stopLinger()
		s.stopLinger = nil
		s.closing = true
		go p.end(s)
	}
}

// retire takes s out of reach of new dials (a SUBSCRIBE on it went
// unanswered for the whole of a dial): they connect a new session. s
// ends once its connections are closed, without lingering.
func (p *Sessions) retire(s *brokerSession) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s.retired = true
	if p.byKey[s.key] == s {
		delete(p.byKey, s.key)
	}
}

// release drops a reference to s; the last one starts its linger, or ends
// it at once when it failed, was lost or retired, lingers for no time, or
// the pool is closed.
func (p *Sessions) release(s *brokerSession) {
	p.mu.Lock()
	s.refs--
	if s.refs > 0 || s.closing {
		p.mu.Unlock()
		return
	}
	if p.closed || s.failed || s.retired || s.isLost() || p.opts.Linger < 0 {
		s.closing = true
		if p.byKey[s.key] == s {
			delete(p.byKey, s.key)
		}
		p.mu.Unlock()
		p.end(s)
		return
	}
	s.lingerGen++
	gen := s.lingerGen
	s.stopLinger = p.opts.AfterFunc(p.opts.Linger, func() { p.expire(s, gen) })
	p.mu.Unlock()
}

// expire ends s when its linger ran out and nobody took it meanwhile.
func (p *Sessions) expire(s *brokerSession, gen int) {
	p.mu.Lock()
	if s.refs > 0 || s.closing || s.lingerGen != gen {
		p.mu.Unlock()
		return
	}
	s.closing = true
	s.stopLinger = nil
	if p.byKey[s.key] == s {
		delete(p.byKey, s.key)
	}
	p.mu.Unlock()
	p.end(s)
}

// end shuts s down and stops counting it.
func (p *Sessions) end(s *brokerSession) {
	s.shutdown()
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.live[s]; !ok {
		return
	}
	delete(p.live, s)
	if s.open {
		s.open = false
		p.stats.Open--
	}
}

// Close disconnects every session, lingering or in use, and waits for
// them: connections still open return ErrClosed from Send and Recv, and
// later dials fail. It is idempotent.
func (p *Sessions) Close() error {
	p.mu.Lock()
	p.closed = true
	all := make([]*brokerSession, 0, len(p.live))
	for s := range p.live {
		all = append(all, s)
		if s.stopLinger != nil {
			s.stopLinger()
			s.stopLinger = nil
		}
		s.closing = true
	}
	clear(p.byKey)
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, s := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.end(s)
		}()
	}
	wg.Wait()
	return nil
}
