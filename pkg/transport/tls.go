package transport

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// ErrTLS is matched by every *TLSError: the TLS connection to the device
// (or broker) could not be set up securely. A *TLSError matches ErrAuth
// too: like refused credentials, it will not go away by trying again.
var ErrTLS = errors.New("TLS failed")

// TLSError explains a failed TLS connection: what did not match and how to
// fix it (docs/security.md, "TLS").
type TLSError struct {
	// Peer is what was there ("device", "MQTT broker"); Where its address,
	// secrets redacted.
	Peer, Where string
	// Problem says what went wrong, Hint what to do.
	Problem, Hint string
	// Err is the error from crypto/tls or crypto/x509.
	Err error
}

func (e *TLSError) Error() string {
	peer := e.Peer
	if peer == "" {
		peer = "device"
	}
	return fmt.Sprintf("TLS with the %s at %s failed: %s: %s", peer, e.Where, e.Problem, e.Hint)
}

// Unwrap returns the underlying error.
func (e *TLSError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrTLS) and errors.Is(err, ErrAuth) true.
func (e *TLSError) Is(target error) bool { return target == ErrTLS || target == ErrAuth }

// Reason is "tls" (the "reason" of otactl's --json error document).
func (e *TLSError) Reason() string { return "tls" }

// ExplainTLS returns a *TLSError for err when err is a TLS failure (an
// untrusted, mismatched or expired certificate, a peer that does not speak
// TLS, a client certificate the peer wants or refuses), else nil. where is
// the address (redacted), peer what is there ("device", "MQTT broker"),
// plain the scheme to suggest when the peer speaks no TLS (http://, ws://,
// mqtt://); cw, when set, says whether a client certificate was configured
// and whether the peer asked for one that was not sent.
func ExplainTLS(err error, peer, where, plain string, cw *CertWatch) *TLSError {
	if err == nil {
		return nil
	}
	var te *TLSError
	if errors.As(err, &te) {
		return te
	}
	e := &TLSError{Peer: peer, Where: where, Err: err}
	haveCert := cw.HaveCert()
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalid x509.CertificateInvalidError
	var rec tls.RecordHeaderError
	var verr *tls.CertificateVerificationError
	switch {
	case errors.As(err, &hostErr):
		e.Problem = fmt.Sprintf("the "+peer+"'s certificate is not valid for %q (%s)", hostErr.Host, certNames(hostErr.Certificate))
		e.Hint = "address the " + peer + " by a name the certificate holds, or pass --tls-server-name NAME with one of them (when you reach it by its IP address)"
	case errors.As(err, &unknownCA):
		e.Problem = "the " + peer + "'s certificate is not signed by a CA otactl trusts" + certWho(unknownCA.Cert)
		e.Hint = "pass the CA certificate that signed it with --ca-cert-file CA.pem (or, for a test only, skip verification with --insecure)"
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		e.Problem = "the " + peer + "'s certificate is outside its validity period" + certDates(invalid.Cert)
		e.Hint = "check the clocks of this computer and the " + peer + ", and renew the certificate"
	case errors.As(err, &invalid):
		e.Problem = "the " + peer + "'s certificate cannot be used: " + invalid.Error()
		e.Hint = "check the " + peer + "'s certificate (it must be a server certificate for this name) and the CA you pass with --ca-cert-file"
	case errors.As(err, &rec):
		e.Problem = "the TLS handshake failed: the other end does not speak TLS"
		if strings.HasPrefix(string(rec.RecordHeader[:]), "HTTP/") {
			e.Problem = "the TLS handshake failed: the other end answered in plain HTTP"
		}
		e.Hint = fmt.Sprintf("if the "+peer+" serves no TLS on this port, use %s instead", plain)
	case cw.Missing() && !remoteAlert(err, "") && dropped(err):
		// TLS 1.3: the handshake ends on our side before the peer checks
		// our (missing) certificate; its alert and close then race our
		// first write, which may see only a reset.
		if haveCert {
			e.Problem = "the " + peer + " asked for a client certificate signed by a CA it trusts, none of those given is, so none was sent, and it closed the connection"
			e.Hint = "use a certificate (--cert-file, --key-file) signed by a CA the " + peer + " trusts for clients"
		} else {
			e.Problem = "the " + peer + " requires a client certificate (mutual TLS) and none was sent"
			e.Hint = "pass your certificate and key with --cert-file CERT.pem --key-file KEY.pem"
		}
	case remoteAlert(err, "certificate required") && haveCert:
		e.Problem = "the " + peer + " requires a client certificate signed by a CA it trusts, and the one given is not (so none was sent)"
		e.Hint = "use a certificate (--cert-file, --key-file) signed by a CA the " + peer + " trusts for clients"
	case remoteAlert(err, "certificate required"):
		e.Problem = "the " + peer + " requires a client certificate (mutual TLS) and none was sent"
		e.Hint = "pass your certificate and key with --cert-file CERT.pem --key-file KEY.pem"
	case remoteAlert(err, "unknown certificate authority"), remoteAlert(err, "bad certificate"):
		e.Problem = "the " + peer + " refused otactl's client certificate"
		e.Hint = "use a certificate (--cert-file, --key-file) signed by a CA the " + peer + " trusts for clients"
	case remoteAlert(err, "certificate expired"):
		e.Problem = "the " + peer + " refused otactl's client certificate: it has expired"
		e.Hint = "renew the certificate passed with --cert-file"
	case errors.As(err, &verr):
		e.Problem = "the " + peer + "'s certificate was refused: " + verr.Err.Error()
		e.Hint = "check the " + peer + "'s certificate and the CA you pass with --ca-cert-file"
	case remoteAlert(err, ""):
		e.Problem = "the " + peer + " ended the TLS handshake: " + opErr(err)
		e.Hint = "check that both ends share a TLS version and cipher suite, and the certificates each side expects"
	default:
		return nil
	}
	return e
}

// dropped reports whether err is the connection closed or reset by the
// other end.
func dropped(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// CertWatch records, for the connections made with the config Watch
// returns, whether the peer asked for a client certificate and none was
// sent. The zero value is ready; a nil *CertWatch reports nothing.
type CertWatch struct {
	have    bool
	missing atomic.Bool
}

// Watch returns a copy of conf (nil: a default config) that chooses the
// client certificate as crypto/tls does (the first of Certificates the
// peer accepts) and records when it had none to send.
func (w *CertWatch) Watch(conf *tls.Config) *tls.Config {
	if conf == nil {
		conf = &tls.Config{MinVersion: tls.VersionTLS12}
	} else {
		conf = conf.Clone()
	}
	if conf.GetClientCertificate != nil {
		return conf
	}
	certs := conf.Certificates
	w.have = len(certs) > 0
	conf.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
		for i := range certs {
			if cri.SupportsCertificate(&certs[i]) == nil {
				return &certs[i], nil
			}
		}
		w.missing.Store(true)
		return &tls.Certificate{}, nil
	}
	return conf
}

// Missing reports whether a peer asked for a client certificate that was
// not sent.
func (w *CertWatch) Missing() bool { return w != nil && w.missing.Load() }

// HaveCert reports whether the watched config had client certificates.
func (w *CertWatch) HaveCert() bool { return w != nil && w.have }

// remoteAlert reports whether err is a TLS alert from the other end
// containing text (any alert for "").
func remoteAlert(err error, text string) bool {
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "remote error" {
		return false
	}
	return strings.Contains(op.Err.Error(), text)
}

func opErr(err error) string {
	var op *net.OpError
	if errors.As(err, &op) {
		return op.Err.Error()
	}
	return err.Error()
}

func certNames(c *x509.Certificate) string {
	if c == nil {
		return "no certificate"
	}
	var names []string
	names = append(names, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 {
		if c.Subject.CommonName != "" {
			return fmt.Sprintf("it names only the common name %q, which is not used for host names: reissue it with a subjectAltName", c.Subject.CommonName)
		}
		return "it names no host"
	}
	return "it is valid for " + strings.Join(names, ", ")
}

func certWho(c *x509.Certificate) string {
	if c == nil {
		return ""
	}
	s := fmt.Sprintf(" (subject %q, issued by %q", c.Subject.String(), c.Issuer.String())
	if c.Subject.String() == c.Issuer.String() {
		s += ", self-signed"
	}
	return s + ")"
}

func certDates(c *x509.Certificate) string {
	if c == nil {
		return ""
	}
	return fmt.Sprintf(" (valid from %s to %s; now %s)", c.NotBefore.UTC().Format(time.DateTime), c.NotAfter.UTC().Format(time.DateTime),
		time.Now().UTC().Format(time.DateTime))
}
