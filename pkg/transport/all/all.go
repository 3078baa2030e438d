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

// NewRegistry returns a registry with every transport registered. Each
// MQTT dial opens a broker connection of its own, which closing its
// connection ends; the registry holds nothing and needs no Close.
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

// NewSharedRegistry returns a registry with every transport registered,
// whose MQTT dials share broker connections through one mqtt.Sessions
// (returned too, for its Stats): any number of devices behind one broker
// take one client connection (docs/transports.md). Close the registry
// when done; it disconnects from the brokers.
func NewSharedRegistry(opts mqtt.SessionsOptions) (*transport.Registry, *mqtt.Sessions) {
	r := NewRegistry()
	s := mqtt.NewSessions(opts)
	r.Register("mqtt", s.Dial)
	r.Register("mqtts", s.Dial)
	r.OnClose(s.Close)
	return r, s
}
