package emulator

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// TLSConfig is the device's TLS: the certificate its HTTP server (and the
// embedded MQTT broker) presents, the CAs whose client certificates it
// requires, and how it checks an mqtts:// broker (docs/security.md).
type TLSConfig struct {
	// CertFile and KeyFile are the server certificate (PEM, with any
	// intermediates after it) and its key: the HTTP listener serves
	// https:// and wss://, and an embedded broker mqtts://. Empty: no TLS
	// on the device's own listeners.
	CertFile, KeyFile string
	// ClientCAFile, when set, makes those listeners require a client
	// certificate signed by one of its CAs (mutual TLS).
	ClientCAFile string
	// MQTTCAFile holds the CAs the device trusts for an mqtts:// broker
	// (default: the system roots). MQTTCertFile and MQTTKeyFile are the
	// client certificate it presents to that broker, if it wants one.
	MQTTCAFile, MQTTCertFile, MQTTKeyFile string
}

// deviceTLS is TLSConfig loaded.
type deviceTLS struct {
	server *tls.Config       // nil: plain listeners
	leaf   *x509.Certificate // the server certificate
	cert   tls.Certificate
	broker *tls.Config // for an external mqtts:// broker; nil: system roots
}

func loadTLS(c *TLSConfig) (*deviceTLS, error) {
	if c == nil {
		return nil, nil
	}
	out := &deviceTLS{}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return nil, errors.New("emulator: a TLS certificate and its key go together (--tls-cert and --tls-key)")
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("emulator: loading the TLS certificate: %w", err)
		}
		leaf, err := x509.ParseCertificate(cert.Certificate[0])
		if err != nil {
			return nil, fmt.Errorf("emulator: the TLS certificate: %w", err)
		}
		cert.Leaf = leaf
		out.cert, out.leaf = cert, leaf
		out.server = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		if c.ClientCAFile != "" {
			pool, err := loadPool(c.ClientCAFile)
			if err != nil {
				return nil, fmt.Errorf("emulator: client CA file: %w", err)
			}
			out.server.ClientCAs = pool
			out.server.ClientAuth = tls.RequireAndVerifyClientCert
		}
	} else if c.ClientCAFile != "" {
		return nil, errors.New("emulator: client certificates (--tls-client-ca) need the device's own certificate (--tls-cert, --tls-key)")
	}
	if c.MQTTCAFile != "" || c.MQTTCertFile != "" || c.MQTTKeyFile != "" {
		conf := &tls.Config{MinVersion: tls.VersionTLS12}
		if c.MQTTCAFile != "" {
			pool, err := loadPool(c.MQTTCAFile)
			if err != nil {
				return nil, fmt.Errorf("emulator: MQTT CA file: %w", err)
			}
			conf.RootCAs = pool
		}
		if (c.MQTTCertFile == "") != (c.MQTTKeyFile == "") {
			return nil, errors.New("emulator: the MQTT client certificate and its key go together")
		}
		if c.MQTTCertFile != "" {
			cert, err := tls.LoadX509KeyPair(c.MQTTCertFile, c.MQTTKeyFile)
			if err != nil {
				return nil, fmt.Errorf("emulator: loading the MQTT client certificate: %w", err)
			}
			conf.Certificates = []tls.Certificate{cert}
		}
		out.broker = conf
	}
	return out, nil
}

// serverConfig is the TLS config of the device's own listeners; nil: plain.
func (t *deviceTLS) serverConfig() *tls.Config {
	if t == nil {
		return nil
	}
	return t.server
}

func loadPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return pool, nil
}

// embeddedServer is the TLS config of the embedded broker's listener. With
// client CAs, it requires a client certificate signed by one of them, or
// the device's own certificate: the device is the broker's client too, in
// the same process.
func (t *deviceTLS) embeddedServer() *tls.Config {
	if t == nil || t.server == nil {
		return nil
	}
	conf := t.server.Clone()
	if conf.ClientCAs == nil {
		return conf
	}
	cas, own := conf.ClientCAs, t.leaf
	// The CAs are not announced (a client would then withhold a
	// certificate they did not sign, the device's own included): every
	// client sends its certificate, checked below.
	conf.ClientCAs = nil
	conf.ClientAuth = tls.RequireAnyClientCert
	conf.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("no client certificate")
		}
		leaf := cs.PeerCertificates[0]
		if bytes.Equal(leaf.Raw, own.Raw) {
			return nil
		}
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		_, err := leaf.Verify(x509.VerifyOptions{Roots: cas, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		return err
	}
	return conf
}

// embeddedClient is the device's own TLS config towards its embedded
// broker: it presents its certificate, and takes exactly that certificate
// from the broker (the two ends are one process).
func (t *deviceTLS) embeddedClient() *tls.Config {
	own := t.leaf
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		Certificates:       []tls.Certificate{t.cert},
		InsecureSkipVerify: true, // replaced by the pinning below
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 || !bytes.Equal(cs.PeerCertificates[0].Raw, own.Raw) {
				return errors.New("the embedded broker presented another certificate")
			}
			return nil
		},
	}
}
