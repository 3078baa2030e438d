package cli

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// tlsConfig builds the TLS settings of the TLS ports (https, wss, mqtts)
// from --ca-cert-file, --cert-file/--key-file, --tls-server-name and
// --insecure. Nil means the defaults: verification against the system
// roots and the host name of --port.
func (f *Factory) tlsConfig() (*tls.Config, error) {
	g := f.G
	if g.CACertFile == "" && g.CertFile == "" && g.KeyFile == "" && !g.Insecure && g.TLSServerName == "" {
		return nil, nil
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: g.TLSServerName}
	if g.CACertFile != "" {
		if g.Insecure {
			return nil, usageErrorf("--insecure and --ca-cert-file contradict each other: --ca-cert-file verifies the device's certificate, --insecure skips that; drop --insecure")
		}
		pem, err := os.ReadFile(g.CACertFile)
		if err != nil {
			return nil, usageErrorf("--ca-cert-file: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, usageErrorf("--ca-cert-file %s holds no PEM certificate", g.CACertFile)
		}
		conf.RootCAs = pool
	}
	if (g.CertFile == "") != (g.KeyFile == "") {
		return nil, usageErrorf("--cert-file and --key-file go together: the client certificate and its private key")
	}
	if g.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(g.CertFile, g.KeyFile)
		if err != nil {
			// The error names files and says what is wrong with them; it
			// never holds key material.
			return nil, usageErrorf("loading --cert-file/--key-file: %v", err)
		}
		conf.Certificates = []tls.Certificate{cert}
	}
	if g.Insecure {
		conf.InsecureSkipVerify = true
		if !f.insecureWarned {
			f.insecureWarned = true
			fmt.Fprintln(f.IO.ErrOut, f.palette().yellow("warning:")+" --insecure: the TLS certificate of the device or broker is NOT verified; anyone on the path can read and change the traffic, credentials included. Use --ca-cert-file instead.")
		}
	}
	return conf, nil
}
