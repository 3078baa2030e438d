package mqtt

import (
	"context"
	"sort"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/rpc/frame"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/mqtt/mqtttest"
	"github.com/otactl/otactl/pkg/transport/transporttest"
)

// secondReplyLag sends n requests to a device id that two devices serve and
// returns, for each, how long after the first reply the second arrived.
func secondReplyLag(tb testing.TB, brokerURL string, n int) []time.Duration {
	tb.Helper()
	dev := randomID("dupdev-")
	for range 2 {
		s, err := Serve(context.Background(), mustURL(tb, brokerURL), dev, transporttest.NewEchoDevice(), transport.Options{})
		if err != nil {
			tb.Fatalf("Serve: %v", err)
		}
		tb.Cleanup(func() { s.Close() })
	}
	c, err := Dial(context.Background(), mustURL(tb, brokerURL+"/"+dev), transport.Options{})
	if err != nil {
		tb.Fatalf("Dial: %v", err)
	}
	tb.Cleanup(func() { c.Close() })
	lags := make([]time.Duration, 0, n)
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		req := &frame.Frame{ID: 1<<40 + int64(i) + 1, Method: transporttest.MethodEcho, Params: []byte(`"x"`)}
		if err := c.Send(ctx, req); err != nil {
			tb.Fatalf("send: %v", err)
		}
		var first time.Time
		for got := 0; got < 2; {
			f, err := c.Recv(ctx)
			if err != nil {
				tb.Fatalf("recv (reply %d of request %d): %v", got+1, i, err)
			}
			if f.ID != req.ID {
				continue
			}
			if got++; got == 1 {
				first = time.Now()
			}
		}
		lags = append(lags, time.Since(first))
		cancel()
	}
	return lags
}

// BenchmarkSecondReplyLag measures how long after the first reply a second
// device with the same id answers, through mosquitto
// (scripts/with-mosquitto.sh go test -run '^$' -bench SecondReplyLag ./pkg/transport/mqtt/),
// reporting the median and the largest lag: the settle time before an
// update (docs/transports.md) is chosen from it.
func BenchmarkSecondReplyLag(b *testing.B) {
	bu := mqtttest.Mosquitto(b)
	lags := secondReplyLag(b, bu, max(b.N, 50))
	sort.Slice(lags, func(i, j int) bool { return lags[i] < lags[j] })
	b.ReportMetric(float64(lags[len(lags)/2].Microseconds())/1000, "median-ms")
	b.ReportMetric(float64(lags[len(lags)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(lags[len(lags)-1].Microseconds())/1000, "max-ms")
}
