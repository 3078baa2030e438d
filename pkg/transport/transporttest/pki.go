package transporttest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// PKI is a set of certificates made at test time, as PEM files in Dir:
//
//	ca.pem                 the CA that signs the servers' certificates
//	server.pem, server.key a server certificate for 127.0.0.1, ::1 and localhost
//	named.pem, named.key   a server certificate for dev1.example only (no IP)
//	client-ca.pem          the CA that signs client certificates
//	client.pem, client.key a client certificate signed by client-ca.pem
//	rogue.pem, rogue.key   a client certificate signed by another CA
//	other-ca.pem           a CA that signed nothing here
type PKI struct {
	Dir string
}

// Path returns the path of one of the PKI's files.
func (p *PKI) Path(name string) string { return filepath.Join(p.Dir, name) }

// Fataler is the part of testing.TB the PKI helpers use (a testscript
// command can provide it too).
type Fataler interface {
	Helper()
	Fatal(args ...any)
}

// NewPKI writes a fresh PKI to dir (created if needed).
func NewPKI(t Fataler, dir string) *PKI {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := &PKI{Dir: dir}
	ca, caKey := p.ca(t, "otactl test CA", "ca.pem")
	cca, ccaKey := p.ca(t, "otactl test client CA", "client-ca.pem")
	rca, rcaKey := p.ca(t, "otactl rogue CA", "")
	p.ca(t, "otactl other CA", "other-ca.pem")
	p.leaf(t, "server", ca, caKey, x509.ExtKeyUsageServerAuth, []string{"localhost"}, []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")})
	p.leaf(t, "named", ca, caKey, x509.ExtKeyUsageServerAuth, []string{"dev1.example"}, nil)
	p.leaf(t, "client", cca, ccaKey, x509.ExtKeyUsageClientAuth, nil, nil)
	p.leaf(t, "rogue", rca, rcaKey, x509.ExtKeyUsageClientAuth, nil, nil)
	return p
}

func nextSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	return n
}

func (p *PKI) ca(t Fataler, name, file string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if file != "" {
		writePEM(t, p.Path(file), "CERTIFICATE", der)
	}
	return cert, key
}

func (p *PKI) leaf(t Fataler, name string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, usage x509.ExtKeyUsage, dns []string, ips []net.IP) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: nextSerial(),
		Subject:      pkix.Name{CommonName: "otactl test " + name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		DNSNames:     dns,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, p.Path(name+".pem"), "CERTIFICATE", der)
	kd, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, p.Path(name+".key"), "EC PRIVATE KEY", kd)
}

func writePEM(t Fataler, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
