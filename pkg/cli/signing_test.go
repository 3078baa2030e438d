package cli

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/otactl/otactl/pkg/ota/bundle"
)

// syncBuffer is a bytes.Buffer safe for a writer and a poller.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

const testPass = "correct horse battery staple"

// keyFiles makes an encrypted key (and its public key) with bundle keygen.
func keyFiles(t *testing.T, dir string) (key, pub, passFile string) {
	t.Helper()
	key, pub, passFile = filepath.Join(dir, "k.pem"), filepath.Join(dir, "k.pub.pem"), filepath.Join(dir, "pass")
	if err := os.WriteFile(passFile, []byte(testPass+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := run(t, nil, "bundle", "keygen", "-o", key, "--encrypt", "--pass-file", passFile)
	if r.code != 0 {
		t.Fatalf("keygen: %d %s", r.code, r.stderr)
	}
	return key, pub, passFile
}

func appFile(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "app.bin")
	if err := os.WriteFile(p, bytes.Repeat([]byte("app"), 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// An encrypted key asks for its passphrase on the terminal (a real pty),
// without echo, and the passphrase shows nowhere.
func TestSignKeyPassphraseFromTerminal(t *testing.T) {
	dir := t.TempDir()
	key, pub, _ := keyFiles(t, dir)
	app := appFile(t, dir)
	for _, tc := range []struct {
		name, typed string
		code        int
	}{
		{"right", testPass, 0},
		{"wrong", "not it", ExitUsage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ptmx, tty, err := pty.Open()
			if err != nil {
				t.Skipf("no pty: %v", err)
			}
			defer ptmx.Close()
			defer tty.Close()
			echoed := make(chan []byte, 1)
			go func() { // what the terminal shows
				var all []byte
				buf := make([]byte, 256)
				for {
					n, err := ptmx.Read(buf)
					all = append(all, buf[:n]...)
					if err != nil {
						echoed <- all
						return
					}
				}
			}()
			var out, errOut syncBuffer
			out2 := filepath.Join(dir, tc.name+".zip")
			done := make(chan int, 1)
			go func() {
				done <- Main([]string{"-v", "bundle", "create", "-o", out2, "--platform", "esp32", "--version", "1.0.0",
					"--sign-key", key, "app:src=" + app}, &IOStreams{In: tty, Out: &out, ErrOut: &errOut}, func(string) string { return "" })
			}()
			// The prompt comes before any key derivation; the wait is
			// bounded by the test's own deadline (go test -timeout).
			deadline, ok := t.Deadline()
			if !ok {
				deadline = time.Now().Add(time.Minute)
			}
			for !strings.Contains(errOut.String(), "Passphrase for "+key+": ") {
				if time.Now().After(deadline) {
					t.Fatalf("no prompt; stderr %q", errOut.String())
				}
				time.Sleep(5 * time.Millisecond)
			}
			if _, err := ptmx.Write([]byte(tc.typed + "\n")); err != nil {
				t.Fatal(err)
			}
			// The key derivation (PBKDF2, 600,000 rounds) takes seconds
			// under -race on a loaded machine: no fixed bound of our own;
			// a hang is caught by go test -timeout with every stack.
			code := <-done
			tty.Close()
			ptmx.Close()
			shown := <-echoed
			if code != tc.code {
				t.Fatalf("exit %d, want %d; stderr %s", code, tc.code, errOut.String())
			}
			for name, s := range map[string]string{"stdout": out.String(), "stderr": errOut.String(), "terminal": string(shown)} {
				if strings.Contains(s, tc.typed) {
					t.Errorf("the passphrase shows on %s: %q", name, s)
				}
			}
			if tc.code != 0 {
				if !strings.Contains(errOut.String(), "wrong passphrase") {
					t.Errorf("stderr %q", errOut.String())
				}
				return
			}
			r := run(t, nil, "bundle", "verify", out2, "--pubkey", pub)
			if r.code != 0 || !strings.Contains(r.stdout, "sig0: verifies with key0") {
				t.Fatalf("verify: %d %s %s", r.code, r.stdout, r.stderr)
			}
		})
	}
}

func TestSignKeyPassphraseWithoutTerminal(t *testing.T) {
	dir := t.TempDir()
	key, _, _ := keyFiles(t, dir)
	r := run(t, nil, "bundle", "create", "-o", filepath.Join(dir, "fw.zip"), "--platform", "esp32", "--version", "1",
		"--sign-key", key, "app:src="+appFile(t, dir))
	if r.code != ExitUsage || !strings.Contains(r.stderr, "no terminal to ask for its passphrase on: give --sign-key-pass-file FILE") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
}

// Neither the private key nor its passphrase appears in any output of the
// signing commands, --verbose and --json included, errors included.
func TestSigningNeverPrintsSecrets(t *testing.T) {
	dir := t.TempDir()
	key, pub, passFile := keyFiles(t, dir)
	plainKey := filepath.Join(dir, "plain.pem")
	app := appFile(t, dir)
	fw := filepath.Join(dir, "fw.zip")
	wrongPass := filepath.Join(dir, "wrong")
	os.WriteFile(wrongPass, []byte("hunter2-not-the-pass\n"), 0o600)
	var outputs []string
	for _, args := range [][]string{
		{"-v", "bundle", "keygen", "-o", plainKey},
		{"-v", "--json", "bundle", "keygen", "-o", filepath.Join(dir, "j.pem")},
		{"-v", "bundle", "create", "-o", fw, "--platform", "esp32", "--version", "1", "--sign-key", key, "--sign-key-pass-file", passFile, "app:src=" + app},
		{"-v", "--json", "bundle", "create", "-o", fw, "--platform", "esp32", "--version", "1", "--sign-key", key, "--sign-key-pass-file", passFile, "app:src=" + app},
		{"-v", "bundle", "create", "-o", fw, "--platform", "esp32", "--version", "1", "--sign-key", key, "--sign-key-pass-file", wrongPass, "app:src=" + app},
		{"-v", "bundle", "sign", fw, "--key", plainKey, "--slot", "1", "-o", fw},
		{"-v", "--json", "bundle", "sign", fw, "--key", key, "--key-pass-file", passFile, "--slot", "2", "-o", fw},
		{"-v", "bundle", "sign", fw, "--key", key, "--key-pass-file", wrongPass, "-o", fw},
		{"-v", "--json", "bundle", "verify", fw, "--pubkey", pub},
		{"-v", "bundle", "inspect", fw},
	} {
		r := run(t, nil, args...)
		outputs = append(outputs, r.stdout, r.stderr)
	}
	secrets := []string{testPass, "hunter2-not-the-pass", "PRIVATE KEY"}
	for _, f := range []string{key, plainKey, filepath.Join(dir, "j.pem")} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		// The first base64 line holds the private scalar (or, encrypted,
		// ciphertext); later lines of an "EC PRIVATE KEY" also hold the
		// public key, which may be printed.
		body := strings.Split(strings.TrimSpace(string(data)), "\n")
		secrets = append(secrets, body[1])
		k, err := bundle.ParsePrivateKey(data, f, func(string) ([]byte, error) { return []byte(testPass), nil })
		if err != nil {
			t.Fatal(err)
		}
		d := k.D.FillBytes(make([]byte, 32))
		secrets = append(secrets, k.D.Text(16), k.D.Text(10), base64.StdEncoding.EncodeToString(d), hex.EncodeToString(d))
		if st, _ := os.Stat(f); st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v", f, st.Mode().Perm())
		}
	}
	all := strings.Join(outputs, "\n")
	for _, s := range secrets {
		if strings.Contains(all, s) {
			i := strings.Index(all, s)
			t.Errorf("a secret (%.12s…) appears in the output: %q", s, all[max(0, i-200):min(len(all), i+100)])
		}
	}
	// The outputs did say something: the checks above are not vacuous.
	for _, want := range []string{"update.key0=", "signed: sig0", "wrong passphrase", "signatures now sig0, sig1", `"verified": true`, "signatures: sig0, sig1, sig2"} {
		if !strings.Contains(all, want) {
			t.Errorf("no %q in the outputs:\n%s", want, all)
		}
	}
}

func TestKeygenJSONMatchesKeyFiles(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "k3.pem")
	r := run(t, nil, "--json", "bundle", "keygen", "-o", key, "--slot", "3")
	if r.code != 0 {
		t.Fatal(r.stderr)
	}
	var doc struct {
		PublicKey, ConfigKey, PublicKeyFile string `json:"-"`
		M                                   map[string]any
	}
	if err := json.Unmarshal([]byte(r.stdout), &doc.M); err != nil {
		t.Fatal(err)
	}
	if doc.M["config_key"] != "update.key3" || doc.M["public_key_file"] != filepath.Join(dir, "k3.pub.pem") {
		t.Fatalf("%v", doc.M)
	}
	priv, _ := os.ReadFile(key)
	k, err := bundle.ParsePrivateKey(priv, key, nil)
	if err != nil {
		t.Fatal(err)
	}
	b64, _ := bundle.PublicKeyBase64(&k.PublicKey)
	if doc.M["public_key"] != b64 {
		t.Fatalf("public_key %v, want %s", doc.M["public_key"], b64)
	}
	pubPEM, _ := os.ReadFile(filepath.Join(dir, "k3.pub.pem"))
	if p, err := bundle.ParsePublicKey(pubPEM); err != nil || !p.Equal(&k.PublicKey) {
		t.Fatalf("public key file: %v", err)
	}
}

// --update-key takes PEM files and the base64 form a device holds, in
// order or with N:; --sig-req-mask takes -1, decimal, 0b and 0x.
func TestEmulatorSigningFlags(t *testing.T) {
	dir := t.TempDir()
	k0, k1 := filepath.Join(dir, "k0.pem"), filepath.Join(dir, "k1.pem")
	for _, k := range []string{k0, k1} {
		if r := run(t, nil, "bundle", "keygen", "-o", k); r.code != 0 {
			t.Fatal(r.stderr)
		}
	}
	pem1, _ := os.ReadFile(filepath.Join(dir, "k1.pub.pem"))
	p1, _ := bundle.ParsePublicKey(pem1)
	b64, _ := bundle.PublicKeyBase64(p1)
	var errOut bytes.Buffer
	f := &Factory{IO: &IOStreams{ErrOut: &errOut}}
	p, err := emulatorSigning(&EmulatorOptions{F: f, UpdateKeys: []string{filepath.Join(dir, "k0.pub.pem"), "", "2:" + b64}, SigReqMask: "0b101"})
	if err != nil {
		t.Fatal(err)
	}
	if p.ReqMask != 5 || p.Keys[0] == nil || p.Keys[1] != nil || !p.Keys[2].Equal(p1) {
		t.Fatalf("policy %+v", p)
	}
	if p, err := emulatorSigning(&EmulatorOptions{F: f, SigReqMask: "-1"}); p != nil || err != nil {
		t.Fatalf("defaults: %+v %v", p, err)
	}
	if p, err := emulatorSigning(&EmulatorOptions{F: f, SigReqMask: "0"}); err != nil || p == nil || p.ReqMask != 0 {
		t.Fatalf("mask 0: %+v %v", p, err)
	}
	for _, bad := range []EmulatorOptions{
		{F: f, SigReqMask: "-2"},
		{F: f, SigReqMask: "lots"},
		{F: f, SigReqMask: "1", UpdateKeys: []string{"8:" + b64}},
		{F: f, SigReqMask: "1", UpdateKeys: []string{k0}}, // a private key
		{F: f, SigReqMask: "1", UpdateKeys: []string{"0:" + b64, "0:" + b64}},
		{F: f, SigReqMask: "1", UpdateKeys: []string{"no-such-file.pem"}},
	} {
		if _, err := emulatorSigning(&bad); ExitCode(err) != ExitUsage {
			t.Errorf("%+v: %v (exit %d)", bad, err, ExitCode(err))
		}
	}
	if _, err := emulatorSigning(&EmulatorOptions{F: f, SigReqMask: "-1", UpdateKeys: []string{b64}}); err != nil || !strings.Contains(errOut.String(), "warning: --update-key without --sig-req-mask") {
		t.Fatalf("keys without a mask: %v, stderr %q", err, errOut.String())
	}
}
