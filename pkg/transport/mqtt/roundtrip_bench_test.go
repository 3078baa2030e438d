package mqtt

import (
	"context"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/mqtt/mqtttest"
	"github.com/otactl/otactl/pkg/transport/transporttest"
)

// BenchmarkRoundTrip measures one request and its reply through mosquitto
// (its default configuration: Nagle's algorithm on), one call at a time,
// with and without quick acknowledgements on otactl's and the device's
// connections (quickack_linux.go), side by side in one run:
//
//	scripts/with-mosquitto.sh go test -run '^$' -bench RoundTrip ./pkg/transport/mqtt/
func BenchmarkRoundTrip(b *testing.B) {
	bu := mqtttest.Mosquitto(b)
	for _, on := range []bool{false, true} {
		name := "quickack=off"
		if on {
			name = "quickack=on"
		}
		b.Run(name, func(b *testing.B) {
			defer func(was bool) { quickAckOn = was }(quickAckOn)
			quickAckOn = on
			dev := randomID("rtdev-")
			s, err := Serve(context.Background(), mustURL(b, bu), dev, transporttest.NewEchoDevice(), transport.Options{})
			if err != nil {
				b.Fatalf("Serve: %v", err)
			}
			defer s.Close()
			c, err := Dial(context.Background(), mustURL(b, bu+"/"+dev), transport.Options{})
			if err != nil {
				b.Fatalf("Dial: %v", err)
			}
			defer c.Close()
			n := max(b.N, 20) // make bench runs each benchmark once
			b.ResetTimer()
			start := time.Now()
			for range n {
				echoCall(b, c, "x")
			}
			b.ReportMetric(float64(time.Since(start).Microseconds())/1000/float64(n), "ms/call")
		})
	}
}
