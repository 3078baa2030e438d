package mqtt

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/mqtt/mqtttest"
)

// responder answers, on one broker connection of its own, the requests to
// every device id ("+/rpc"): a thousand devices at the cost of one client.
// Each reply is signed with the device id the request named, and carries
// it as the result.
func responder(tb testing.TB, brokerURL string) {
	tb.Helper()
	b, err := parseBroker(mustURL(tb, brokerURL))
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d := newDialer(ctx, b, nil)
	cl := paho.NewClient(clientOptions(b, randomID("otadev-"), d))
	if err := connect(ctx, cl, d, b); err != nil {
		tb.Fatalf("responder: %v", err)
	}
	var t tracker
	tb.Cleanup(func() {
		t.shut()
		disconnect(cl)
		t.wait()
	})
	if err := subscribe(ctx, cl, "+/rpc", func(c paho.Client, m paho.Message) {
		defer m.Ack()
		if !t.enter() {
			return
		}
		defer t.leave()
		req, err := frame.Parse(m.Payload())
		if err != nil || req.ID == 0 || req.Src == "" {
			return
		}
		res, _ := json.Marshal(req.Dst)
		data, _ := frame.Marshal(&frame.Frame{ID: req.ID, Src: req.Dst, Dst: req.Src, Result: res})
		c.Publish(req.Src+"/rpc", qos, false, data)
	}, nil); err != nil {
		tb.Fatalf("responder: %v", err)
	}
}

// callEach dials every device (at most parallel at once), calls each once
// and checks the answer, then returns the connections, open.
func callEach(tb testing.TB, dial transport.DialFunc, brokerURL string, ids []string, parallel int) []transport.Conn {
	tb.Helper()
	conns := make([]transport.Conn, len(ids))
	errs := make(chan error, len(ids))
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			u, _ := url.Parse(brokerURL + "/" + id)
			c, err := dial(ctx, u, transport.Options{})
			if err != nil {
				errs <- err
				return
			}
			conns[i] = c
			fid := 1<<40 + int64(i)
			if err := c.Send(ctx, &frame.Frame{ID: fid, Method: "Sys.GetInfo"}); err != nil {
				errs <- err
				return
			}
			f, err := c.Recv(ctx)
			if err == nil && (f.ID != fid || f.Src != id || string(f.Result) != `"`+id+`"`) {
				err = fmt.Errorf("%s: answer %+v", id, f)
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
		tb.Fatal(err)
	}
	return conns
}

// BenchmarkBrokerConnections is issue 8's benchmark 5: the broker
// connections held by otactl while it talks to 1,000 devices behind one
// broker (goal: 1). Each op dials the 1,000 devices, at most 200 at once
// (fleet update's --parallel), calls each once, counts otactl's broker
// connections while all are open, and closes them. "dial=shared" dials
// through one Sessions, as otactl does; "dial=own" through Dial, a
// connection each, for comparison. Connections are counted by the broker
// (mochi's client list) or, for mosquitto, as this process's TCP
// connections to it (/proc), less the responder's. Run with
// scripts/with-mosquitto.sh for the mosquitto figures.
func BenchmarkBrokerConnections(b *testing.B) {
	const devices, parallel = 1000, 200
	ids := make([]string, devices)
	for i := range ids {
		ids[i] = fmt.Sprintf("fleet-%04d", i)
	}
	brokers := []struct {
		name string
		// start starts the broker and the responder, and returns a
		// function that counts otactl's connections to the broker.
		start func(b *testing.B) (url string, count func() int)
	}{
		{"mochi", func(b *testing.B) (string, func() int) {
			m := mqtttest.Start(b, mqtttest.Config{})
			responder(b, m.URL)
			return m.URL, func() int { return m.Clients("otactl-") }
		}},
		{"mosquitto", func(b *testing.B) (string, func() int) {
			u := mqtttest.Mosquitto(b)
			addr := strings.TrimPrefix(u, "mqtt://")
			responder(b, u)
			base, err := mqtttest.TCPConns(os.Getpid(), addr)
			if err != nil {
				b.Skip(err)
			}
			return u, func() int {
				n, err := mqtttest.TCPConns(os.Getpid(), addr)
				if err != nil {
					b.Fatal(err)
				}
				return n - base
			}
		}},
	}
	for _, br := range brokers {
		for _, mode := range []string{"shared", "own"} {
			b.Run("broker="+br.name+"/dial="+mode, func(b *testing.B) {
				u, count := br.start(b)
				held, subscribes := 0, 0
				b.ResetTimer()
				for range b.N {
					dial := transport.DialFunc(Dial)
					var p *Sessions
					if mode == "shared" {
						p = NewSessions(SessionsOptions{})
						dial = p.Dial
					}
					conns := callEach(b, dial, u, ids, parallel)
					held = max(held, count())
					if p != nil {
						subscribes += p.Stats().Subscribes
					}
					for _, c := range conns {
						c.Close()
					}
					if p != nil {
						p.Close()
					}
					// The next op counts its own connections only: wait
					// until the broker saw these go.
					b.StopTimer()
					for deadline := time.Now().Add(10 * time.Second); count() != 0; time.Sleep(5 * time.Millisecond) {
						if time.Now().After(deadline) {
							b.Fatalf("%d connections still open after Close", count())
						}
					}
					b.StartTimer()
				}
				b.StopTimer()
				b.ReportMetric(float64(held), "broker-conns")
				b.ReportMetric(float64(devices), "devices")
				if mode == "shared" {
					b.ReportMetric(float64(subscribes)/float64(b.N), "subscribes")
				}
			})
		}
	}
}
