// Package all builds a transport registry holding every transport otactl
// ships: serial, HTTP(S), WebSocket (ws, wss) and MQTT (mqtt, mqtts).
package all

import (
	"github.com/otactl/otactl/pkg/transport"
	httptransport "github.com/otactl/otactl/pkg/transport/http"
	"github.com/otactl/otactl/pkg/transport/mqtt"
	"github.com/otactl/otactl/pkg/transport/serial"
	"github.com/otactl/otactl/pkg/transport/ws"
)

// NewRegistry returns a registry with every transport registered.
func NewRegistry() *transport.Registry {
	r := &transport.Registry{}
	r.Register("serial", serial.Dial)
	r.Register("http", httptransport.Dial)
	r.Register("https", httptransport.Dial)
	r.Register("ws", ws.Dial)
	r.Register("wss", ws.Dial)
	r.Register("mqtt", mqtt.Dial)
	r.Register("mqtts", mqtt.Dial)
	return r
}
