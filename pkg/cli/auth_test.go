package cli

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/otactl/otactl/pkg/transport/mqtt/mqtttest"
)

// Refused credentials are exit 4 on every transport that checks them
// itself: an HTTP 401, a refused WebSocket handshake, a refused MQTT connect.
func TestAuthFailuresExit4(t *testing.T) {
	deny := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusUnauthorized)
	}))
	t.Cleanup(deny.Close)
	host := strings.TrimPrefix(deny.URL, "http://")
	broker := mqtttest.StartAuthBroker(t, "dev", "right-pass")
	mhost := strings.TrimPrefix(broker, "mqtt://")

	for _, port := range []string{
		deny.URL + "/rpc",
		"ws://tok3n@" + host + "/rpc",
		"mqtt://dev:wr0ng-pass@" + mhost + "/dev1",
		"mqtt://" + mhost + "/dev1",
	} {
		r := run(t, nil, "--port", port, "--timeout", "5s", "call", "Sys.GetInfo")
		if r.code != ExitAuth {
			t.Errorf("%s: exit %d, want %d; stderr %q", port, r.code, ExitAuth, r.stderr)
		}
		for _, secret := range []string{"wr0ng-pass", "tok3n", "right-pass"} {
			if strings.Contains(r.stderr, secret) {
				t.Errorf("%s: secret %q printed: %q", port, secret, r.stderr)
			}
		}
	}
}
