package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/otactl/otactl/pkg/device/emulator"
	"github.com/otactl/otactl/pkg/transport/transporttest"
)

// Security holds for each device of a host: mutual TLS on the shared
// listener and the embedded broker, RPC users and the ACL on every device,
// the HTTP digest answered for the device's own path (/<id>/rpc).
func TestSecuredHost(t *testing.T) {
	pki := transporttest.NewPKI(t, t.TempDir())
	h, err := emulator.NewHost(context.Background(), emulator.HostConfig{
		Listen: "127.0.0.1:0", MQTTBroker: "embedded:127.0.0.1:0",
		TLS: &emulator.TLSConfig{CertFile: pki.Path("server.pem"), KeyFile: pki.Path("server.key"), ClientCAFile: pki.Path("client-ca.pem")},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	auth := &emulator.AuthConfig{File: htdigestFile(t, "MD5", map[string]string{"admin": adminPW, "viewer": viewerPW}), Algo: "MD5", ACL: securedACL}
	dir := t.TempDir()
	var cfgs []emulator.Config
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("dev-%04d", i)
		cfgs = append(cfgs, emulator.Config{ID: id, StateDir: filepath.Join(dir, id), Auth: auth})
	}
	devs, err := h.AddDevices(context.Background(), cfgs)
	if err != nil {
		t.Fatal(err)
	}
	tlsArgs := []string{"--ca-cert-file", pki.Path("ca.pem"), "--cert-file", pki.Path("client.pem"), "--key-file", pki.Path("client.key")}
	for _, l := range devs[1].Listeners() {
		t.Run(l.Transport, func(t *testing.T) {
			if !strings.HasPrefix(l.Addr, "https://127.0.0.1:") && !strings.HasPrefix(l.Addr, "wss://127.0.0.1:") && !strings.HasPrefix(l.Addr, "mqtts://127.0.0.1:") {
				t.Fatalf("%s: not TLS", l.Addr)
			}
			if !strings.HasSuffix(l.Addr, "/dev-0002/rpc") && !strings.HasSuffix(l.Addr, "/dev-0002") {
				t.Fatalf("%s: not dev-0002's address", l.Addr)
			}
			base := append([]string{"--timeout", "10s", "--port", l.Addr}, tlsArgs...)
			run := func(t *testing.T, env map[string]string, args ...string) result {
				r := run(t, env, args...)
				noSecrets(t, l.Transport, r)
				return r
			}
			r := run(t, nil, append(base, "--rpc-creds", "admin:"+adminPW, "call", "Sys.GetInfo")...)
			var info struct{ ID string }
			if r.code != 0 || json.Unmarshal([]byte(r.stdout), &info) != nil || info.ID != "dev-0002" {
				t.Fatalf("Sys.GetInfo as admin: exit %d, %s %s", r.code, r.stdout, r.stderr)
			}
			if r := run(t, nil, append(base, "--rpc-creds", "admin:"+adminPW, "bootstate", "--json")...); r.code != 0 {
				t.Errorf("bootstate as admin: exit %d: %s", r.code, r.stderr)
			}
			if r := run(t, nil, append(base, "bootstate")...); r.code != ExitAuth {
				t.Errorf("bootstate without credentials: exit %d, want %d: %s", r.code, ExitAuth, r.stderr)
			}
			if r := run(t, nil, append(base, "--rpc-creds", "viewer:"+viewerPW, "call", "OTA.Commit")...); r.code != ExitAuth || !strings.Contains(r.stderr, "403") {
				t.Errorf("OTA.Commit as viewer: exit %d, want %d (the ACL's 403): %s", r.code, ExitAuth, r.stderr)
			}
			r = run(t, nil, "--timeout", "10s", "--port", l.Addr, "--ca-cert-file", pki.Path("ca.pem"), "call", "Sys.GetInfo")
			if r.code != ExitAuth || !strings.Contains(r.stderr, "client certificate") {
				t.Errorf("without a client certificate: exit %d: %s", r.code, r.stderr)
			}
		})
	}
}
