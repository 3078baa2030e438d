package mqtt

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/mqtt/mqtttest"
)

// Close of either end while it publishes a burst (a client with many
// requests in flight, a device rebooting while it answers them) returns at
// once: a Publish must not race with the disconnect, after which paho's
// Publish blocks for the whole write timeout (10 s), and Close with it.
func TestCloseDuringPublishes(t *testing.T) {
	noLeaks(t)
	b := mqtttest.Start(t, mqtttest.Config{})
	u := mustURL(t, b.URL+"/dev1")
	for round := range 20 {
		s, err := Serve(ctxT(t), mustURL(t, b.URL), "dev1", transport.HandlerFunc(func(ctx context.Context, f *frame.Frame) *frame.Frame {
			return &frame.Frame{ID: f.ID, Result: []byte(`null`)}
		}), transport.Options{})
		if err != nil {
			t.Fatal(err)
		}
		c, err := Dial(ctxT(t), u, transport.Options{})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		sctx, cancel := context.WithCancel(context.Background())
		flowing := make(chan struct{})
		wg.Add(1)
		go func() { // replies are flowing once 100 came back
			defer wg.Done()
			for n := 1; ; n++ {
				if _, err := c.Recv(sctx); err != nil {
					return
				}
				if n == 100 {
					close(flowing)
				}
			}
		}()
		for i := range 64 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for id := int64(1); sctx.Err() == nil; id++ {
					if c.Send(sctx, &frame.Frame{ID: int64(i)<<32 + id, Method: "X"}) != nil {
						return
					}
				}
			}()
		}
		select {
		case <-flowing:
		case <-time.After(wait):
			t.Fatal("no replies")
		}
		start := time.Now()
		s.Close()
		took := time.Since(start)
		if took > writeTimeout/2 {
			t.Fatalf("round %d: the device side's Close took %v while it published replies", round, took)
		}
		start = time.Now()
		c.Close() // its senders still publish
		took = time.Since(start)
		cancel()
		wg.Wait()
		if took > writeTimeout/2 {
			t.Fatalf("round %d: the client's Close took %v while it published requests", round, took)
		}
	}
}
