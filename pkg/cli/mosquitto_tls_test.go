package cli

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/otactl/otactl/pkg/device/emulator"
	"github.com/otactl/otactl/pkg/transport/transporttest"
)

// mosquittoBin returns the mosquitto executable, or skips the test.
func mosquittoBin(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("mosquitto"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/mosquitto"); err == nil {
		return "/usr/sbin/mosquitto"
	}
	t.Skip("mosquitto is not installed: the mqtts test against a real broker is skipped (apt-get install mosquitto; CI installs it)")
	return ""
}

// lockedBuffer is a bytes.Buffer safe for a process's output and the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startTLSMosquitto runs mosquitto with two TLS listeners on loopback:
// one with the server certificate of pki, one that also requires client
// certificates from pki's client CA. It returns their addresses.
func startTLSMosquitto(t *testing.T, pki *transporttest.PKI) (plain, mutual string) {
	t.Helper()
	bin := mosquittoBin(t)
	dir := t.TempDir()
	// A port picked here may be taken before mosquitto binds it: then
	// mosquitto exits at once, and another pair is picked (a few times).
	for attempt := 0; attempt < 5; attempt++ {
		p1, p2 := freePort(t), freePort(t)
		conf := fmt.Sprintf(`per_listener_settings true
persistence false
log_dest stderr
log_type error
listener %d 127.0.0.1
allow_anonymous true
cafile %s
certfile %s
keyfile %s
listener %d 127.0.0.1
allow_anonymous true
cafile %s
certfile %s
keyfile %s
require_certificate true
`, p1, pki.Path("ca.pem"), pki.Path("server.pem"), pki.Path("server.key"),
			p2, pki.Path("client-ca.pem"), pki.Path("server.pem"), pki.Path("server.key"))
		if os.Geteuid() == 0 {
			// As root, mosquitto drops to its own user, which cannot read
			// the test's private directory.
			conf = "user root\n" + conf
		}
		cf := filepath.Join(dir, "mosquitto.conf")
		if err := os.WriteFile(cf, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		var log lockedBuffer
		cmd := exec.Command(bin, "-c", cf)
		cmd.Stdout, cmd.Stderr = &log, &log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() {
			_ = cmd.Wait()
			close(exited)
		}()
		a1, a2 := fmt.Sprintf("127.0.0.1:%d", p1), fmt.Sprintf("127.0.0.1:%d", p2)
		deadline := time.Now().Add(10 * time.Second)
		for {
			if listening(a1) && listening(a2) {
				t.Cleanup(func() {
					_ = cmd.Process.Kill()
					<-exited
				})
				return a1, a2
			}
			select {
			case <-exited:
				t.Logf("mosquitto exited (attempt %d): %s", attempt+1, log.String())
			case <-time.After(20 * time.Millisecond):
				if time.Now().Before(deadline) {
					continue
				}
				_ = cmd.Process.Kill()
				<-exited
				t.Fatalf("mosquitto did not listen within 10s: %s", log.String())
			}
			break
		}
	}
	t.Fatal("could not start mosquitto on a free port")
	return "", ""
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func listening(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// mqtts through a real mosquitto with TLS: the emulated device connects
// with the CA (and, on the mutual listener, its client certificate);
// otactl is refused without the CA, accepted with it, refused on the
// mutual listener without a client certificate, accepted with one; RPC
// auth on top.
func TestMQTTSThroughMosquitto(t *testing.T) {
	pki := transporttest.NewPKI(t, t.TempDir())
	plain, mutual := startTLSMosquitto(t, pki)
	file := htdigestFile(t, "SHA-256", map[string]string{"admin": adminPW})
	start := func(id, broker string, tc *emulator.TLSConfig) {
		t.Helper()
		d, err := emulator.New(emulator.Config{StateDir: t.TempDir(), ID: id, MQTTBroker: "mqtts://" + broker, TLS: tc,
			Auth: &emulator.AuthConfig{File: file, Algo: "SHA-256", ACL: `[{"method": "*", "acl": "+admin"}]`}})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := d.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		deadline := time.Now().Add(20 * time.Second)
		for !d.State().Online {
			if time.Now().After(deadline) {
				t.Fatalf("device %s did not reach mosquitto at %s", id, broker)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	start("tlsdev", plain, &emulator.TLSConfig{MQTTCAFile: pki.Path("ca.pem")})
	start("mtlsdev", mutual, &emulator.TLSConfig{MQTTCAFile: pki.Path("ca.pem"), MQTTCertFile: pki.Path("client.pem"), MQTTKeyFile: pki.Path("client.key")})

	ca := pki.Path("ca.pem")
	creds := "admin:" + adminPW
	for _, tc := range []struct {
		name string
		code int
		want string
		args []string
	}{
		{"no CA", ExitAuth, "the MQTT broker's certificate is not signed by a CA otactl trusts", []string{"--port", "mqtts://" + plain + "/tlsdev"}},
		{"CA", 0, `"active_slot": 0`, []string{"--port", "mqtts://" + plain + "/tlsdev", "--ca-cert-file", ca}},
		{"CA, no creds", ExitAuth, "requires authentication (in-frame digest", []string{"--port", "mqtts://" + plain + "/tlsdev", "--ca-cert-file", ca, "--rpc-creds="}},
		{"mutual, no client certificate", ExitAuth, "requires a client certificate", []string{"--port", "mqtts://" + mutual + "/mtlsdev", "--ca-cert-file", ca}},
		{"mutual", 0, `"active_slot": 0`, []string{"--port", "mqtts://" + mutual + "/mtlsdev", "--ca-cert-file", ca,
			"--cert-file", pki.Path("client.pem"), "--key-file", pki.Path("client.key")}},
	} {
		args := append([]string{"--timeout", "10s", "--rpc-creds", creds}, tc.args...)
		r := run(t, nil, append(args, "call", "OTA.GetBootState")...)
		noSecrets(t, tc.name, r)
		if r.code != tc.code || !strings.Contains(r.stdout+r.stderr, tc.want) {
			t.Errorf("%s: exit %d (want %d), output does not say %q:\n%s%s", tc.name, r.code, tc.code, tc.want, r.stdout, r.stderr)
		}
	}
}
