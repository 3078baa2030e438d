package transport

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
)

// A peer that asked for a client certificate and got none may close the
// connection before its alert is read (TLS 1.3): the reset our next write
// sees is still explained as the missing certificate.
func TestExplainTLSMissingClientCertificate(t *testing.T) {
	reset := &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", syscall.ECONNRESET)}
	if te := ExplainTLS(reset, "device", "https://x/rpc", "http://", &CertWatch{}); te != nil {
		t.Fatalf("a plain reset explained as TLS: %v", te)
	}
	var cw CertWatch
	conf := cw.Watch(nil)
	cert, err := conf.GetClientCertificate(&tls.CertificateRequestInfo{})
	if err != nil || len(cert.Certificate) != 0 {
		t.Fatalf("GetClientCertificate = %v, %v", cert, err)
	}
	te := ExplainTLS(reset, "MQTT broker", "mqtts://b/dev1", "mqtt://", &cw)
	if te == nil || !strings.Contains(te.Error(), "the MQTT broker requires a client certificate (mutual TLS) and none was sent") {
		t.Fatalf("%v", te)
	}
	if !errors.Is(te, ErrTLS) || !errors.Is(te, ErrAuth) || !errors.Is(te, syscall.ECONNRESET) {
		t.Fatalf("%v does not match ErrTLS, ErrAuth and the cause", te)
	}
}
