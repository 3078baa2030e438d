package rpc

import (
	"context"
	"encoding/json"
	"sync"

	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
)

// Pending is a call in flight, begun by Client.Start.
type Pending struct {
	c     *Client
	ctx   context.Context
	req   *frame.Frame
	known *challenge // the digest challenge answered up front, if any
	cl    *call
	sent  chan error // the result of Send, once it returned
	err   error      // the call failed before it was sent
}

// Start begins a call and returns once its request is on its way, without
// waiting for the reply: Wait gets the result, as Call would have returned
// it. ctx bounds the whole call, the wait included.
//
// Requests begun one after another by one goroutine leave in that order, so
// a caller can keep several calls in flight (a pipeline) and still have the
// device receive them in order on links that keep order (serial, WebSocket,
// MQTT). Over HTTP each request is its own POST, written in that order but
// possibly on different TCP connections: the device may receive them out of
// order.
//
// Call Wait for every Pending: until then, its reply has a place reserved.
func (c *Client) Start(ctx context.Context, method string, params any) *Pending {
	p := &Pending{c: c, ctx: ctx}
	req, err := c.request(method, params)
	if err != nil {
		p.err = err
		return p
	}
	p.req = req
	p.known = c.presetAuth(req)
	if p.cl, err = c.register(req); err != nil {
		p.err = err
		return p
	}
	p.sent = make(chan error, 1)
	onWay := make(chan struct{})
	var once sync.Once
	mark := func() { once.Do(func() { close(onWay) }) }
	sctx := transport.WithSent(ctx, mark)
	go func() {
		err := c.conn.Send(sctx, req)
		p.sent <- err
		mark()
	}()
	select {
	case <-onWay:
	case <-ctx.Done():
	}
	return p
}

// Wait waits for the reply and returns the call's result (see Call).
func (p *Pending) Wait() (json.RawMessage, error) {
	if p.err != nil {
		return nil, p.err
	}
	resp, err := p.c.await(p.ctx, p.req, p.cl, p.sent)
	if err != nil {
		return nil, err
	}
	// A digest challenge is answered here, by sending the request again
	// (out of order: it happens only until the client knows the device's
	// challenge, on its first call or when the nonce went stale).
	resp, authed, err := p.c.authReply(p.ctx, p.req, p.known, resp)
	if err != nil {
		return nil, err
	}
	return p.c.result(resp, p.req.Method, authed)
}
