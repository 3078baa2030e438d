package main

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/rpc"
	"github.com/otactl/otactl/pkg/transport"
	"github.com/otactl/otactl/pkg/transport/all"
	"github.com/otactl/otactl/pkg/transport/mqtt/mqtttest"
)

// tryCall makes one call with a short timeout (a device that is not
// subscribed to its topic never answers an MQTT request).
func tryCall(port, method string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	conn, err := all.NewRegistry().Dial(ctx, port, transport.Options{})
	if err != nil {
		return err
	}
	c := rpc.NewClient(conn, rpc.ClientOptions{})
	defer c.Close()
	_, err = c.Call(ctx, method, nil)
	return err
}

// pollCall calls until the device answers or the time is up.
func pollCall(t *testing.T, p *emulatorProc, port, method, what string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := tryCall(port, method)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v\n%s", what, err, p.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Issue 7, defect 2, on the real process: `otactl emulator --mqtt-broker
// mqtt://…` whose broker is down when it reboots comes back on HTTP at once
// and on MQTT once the broker is back.
func TestEmulatorProcessBrokerOutage(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Config{})
	p := startEmulatorProc(t, filepath.Join(t.TempDir(), "flash"), "--mqtt-broker", b.URL)
	mqttPort := b.URL + "/dev1"
	if err := tryCall(mqttPort, "Sys.GetInfo"); err != nil {
		t.Fatalf("MQTT call: %v\n%s", err, p.log.String())
	}
	b.Close()
	if err := callDevice(t, p.port, "Sys.Reboot", nil, nil); err != nil {
		t.Fatal(err)
	}
	// Until the reboot every call gets error 418; any answer after it
	// comes from the rebooted device.
	pollCall(t, p, p.port, "Sys.GetInfo", "the device did not come back on HTTP with its broker down")
	mqtttest.Start(t, mqtttest.Config{Addr: b.Addr})
	pollCall(t, p, mqttPort, "Sys.GetInfo", "the device did not come back on MQTT after its broker did")
}
