package emulator

import (
	"context"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/all"
	"github.com/otactl/otactl/pkg/transport/mqtt/mqtttest"
)

// mqttConnected reports whether the device's MQTT client is connected and
// subscribed.
func (e *env) mqttConnected() bool {
	e.d.lmu.Lock()
	defer e.d.lmu.Unlock()
	for _, l := range e.d.listeners {
		if ml, ok := l.(*MQTTListener); ok {
			ml.mu.Lock()
			srv := ml.srv
			ml.mu.Unlock()
			return srv != nil && srv.Connected()
		}
	}
	return false
}

// waitMQTT lets the device's reconnect back-off run on its clock until its
// MQTT client is connected again: each round moves the clock past the
// longest first wait (2 s + 10 %).
func (e *env) waitMQTT() {
	e.t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !e.mqttConnected() {
		if time.Now().After(deadline) {
			e.t.Fatalf("the device never reconnected to its broker (state %+v)", e.d.State())
		}
		e.clock.Advance(DefaultMQTTReconnectMin * 11 / 10)
		time.Sleep(time.Millisecond)
	}
}

func (e *env) port(tr string) string {
	e.t.Helper()
	for _, li := range e.d.Listeners() {
		if li.Transport == tr {
			return li.Addr
		}
	}
	e.t.Fatalf("no %s listener in %v", tr, e.d.Listeners())
	return ""
}

// callOver makes one call through the device's listener for tr.
func (e *env) callOver(tr, method string) error {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	conn, err := all.NewRegistry().Dial(ctx, e.port(tr), transport.Options{})
	if err != nil {
		return err
	}
	c := rpc.NewClient(conn, rpc.ClientOptions{})
	defer c.Close()
	_, err = c.Call(ctx, method, nil)
	return err
}

// Issue 7, defect 2: the broker of `--mqtt-broker mqtt://…` is down when
// the device boots. The device boots anyway, answers on HTTP at once, and
// keeps trying its broker with back-off on its clock; when the broker is
// back it connects, subscribes and answers over MQTT. A broker restart
// while the device runs is survived the same way.
func TestMQTTBrokerOutage(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Config{})
	e := newEnv(t, func(c *Config) {
		c.Listen = "127.0.0.1:0"
		c.MQTTBroker = b.URL
	})
	if err := e.callOver("mqtt", "Sys.GetInfo"); err != nil {
		t.Fatalf("MQTT call: %v", err)
	}

	// The broker goes away, then the device reboots.
	b.Close()
	e.mustCall("Sys.Reboot", nil)
	e.waitBoots(2)
	if err := e.callOver("http", "Sys.GetInfo"); err != nil {
		t.Fatalf("HTTP call while the broker is down: %v", err)
	}
	if e.mqttConnected() {
		t.Fatal("connected to a broker that is down")
	}

	// The broker comes back where it was.
	b2 := mqtttest.Start(t, mqtttest.Config{Addr: b.Addr})
	e.waitMQTT()
	if err := e.callOver("mqtt", "Sys.GetInfo"); err != nil {
		t.Fatalf("MQTT call after the broker came back: %v", err)
	}

	// It restarts while the device runs.
	b2.Close()
	deadline := time.Now().Add(waitLimit)
	for e.mqttConnected() {
		if time.Now().After(deadline) {
			t.Fatal("the device did not notice its broker going away")
		}
		time.Sleep(time.Millisecond)
	}
	mqtttest.Start(t, mqtttest.Config{Addr: b.Addr})
	e.waitMQTT()
	if err := e.callOver("mqtt", "OTA.GetBootState"); err != nil {
		t.Fatalf("MQTT call after the broker restarted: %v", err)
	}
}

// The broker is down when the device first powers on: Start succeeds, HTTP
// answers, and MQTT follows once the broker is up.
func TestMQTTBrokerDownAtPowerOn(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Config{})
	b.Close()
	e := newEnv(t, func(c *Config) {
		c.Listen = "127.0.0.1:0"
		c.MQTTBroker = b.URL
	})
	if s := e.d.State(); !s.Online {
		t.Fatalf("not online with the broker down: %+v", s)
	}
	if err := e.callOver("http", "Sys.GetInfo"); err != nil {
		t.Fatalf("HTTP call: %v", err)
	}
	mqtttest.Start(t, mqtttest.Config{Addr: b.Addr})
	e.waitMQTT()
	if err := e.callOver("mqtt", "Sys.GetInfo"); err != nil {
		t.Fatalf("MQTT call: %v", err)
	}
}
