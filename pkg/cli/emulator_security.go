package cli

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/pflag"

	"github.com/otactl/otactl/pkg/device/emulator"
)

// emulatorSecurity holds the emulator's RPC authentication, ACL and TLS
// flags (docs/security.md).
type emulatorSecurity struct {
	AuthFile, AuthDomain, AuthAlgo, ACL string
	TLSCert, TLSKey, TLSClientCA        string
	MQTTCA, MQTTCert, MQTTKey           string
}

func (s *emulatorSecurity) addFlags(fl *pflag.FlagSet) {
	fl.StringVar(&s.AuthFile, "auth-file", "", "rpc.auth_file: htdigest file of user:realm:HA1 lines; calls the ACL restricts need one of these users")
	fl.StringVar(&s.AuthDomain, "auth-domain", emulator.DefaultAuthDomain, "rpc.auth_domain: the realm of the auth file and of the digest challenges")
	fl.StringVar(&s.AuthAlgo, "auth-algo", "md5", "rpc.auth_algo: md5 or sha256, the hash of the auth file and of digest answers")
	fl.StringVar(&s.ACL, "acl", "", `rpc.acl: JSON array of {"method": GLOB, "ch_type": HTTP|WS_in|UART|MQTT, "acl": "+user,-user|*|-*"}, or @FILE; first match wins, no match = 403; none = all allowed`)
	fl.StringVar(&s.TLSCert, "tls-cert", "", "server certificate (PEM): serve https:// and wss:// (and mqtts:// from an embedded broker)")
	fl.StringVar(&s.TLSKey, "tls-key", "", "private key (PEM) of --tls-cert")
	fl.StringVar(&s.TLSClientCA, "tls-client-ca", "", "require client certificates signed by these CAs (PEM): mutual TLS")
	fl.StringVar(&s.MQTTCA, "mqtt-ca-file", "", "CAs (PEM) the device trusts for an mqtts:// --mqtt-broker (default: system roots)")
	fl.StringVar(&s.MQTTCert, "mqtt-cert-file", "", "client certificate (PEM) the device presents to an mqtts:// broker")
	fl.StringVar(&s.MQTTKey, "mqtt-key-file", "", "private key (PEM) of --mqtt-cert-file")
}

// config builds the emulator's auth and TLS settings (nil when unused).
func (s *emulatorSecurity) config(fl *pflag.FlagSet) (*emulator.AuthConfig, *emulator.TLSConfig, error) {
	var auth *emulator.AuthConfig
	if s.AuthFile != "" || s.ACL != "" {
		algo := strings.ToLower(strings.ReplaceAll(s.AuthAlgo, "-", ""))
		switch algo {
		case "md5", "0":
			algo = "MD5"
		case "sha256", "1":
			algo = "SHA-256"
		default:
			return nil, nil, usageErrorf("--auth-algo %q: want md5 or sha256", s.AuthAlgo)
		}
		auth = &emulator.AuthConfig{File: s.AuthFile, Domain: s.AuthDomain, Algo: algo, ACL: s.ACL}
	} else if fl.Changed("auth-domain") || fl.Changed("auth-algo") {
		return nil, nil, usageErrorf("--auth-domain and --auth-algo need --auth-file (and an --acl that names users)")
	}
	var tc *emulator.TLSConfig
	if s.TLSCert != "" || s.TLSKey != "" || s.TLSClientCA != "" || s.MQTTCA != "" || s.MQTTCert != "" || s.MQTTKey != "" {
		if (s.TLSCert == "") != (s.TLSKey == "") {
			return nil, nil, usageErrorf("--tls-cert and --tls-key go together")
		}
		if s.TLSClientCA != "" && s.TLSCert == "" {
			return nil, nil, usageErrorf("--tls-client-ca needs the device's own certificate: --tls-cert and --tls-key")
		}
		tc = &emulator.TLSConfig{CertFile: s.TLSCert, KeyFile: s.TLSKey, ClientCAFile: s.TLSClientCA,
			MQTTCAFile: s.MQTTCA, MQTTCertFile: s.MQTTCert, MQTTKeyFile: s.MQTTKey}
	}
	return auth, tc, nil
}

// describe prints what the device requires, after the firmware line.
func (s *emulatorSecurity) describe(w io.Writer, auth *emulator.AuthConfig, tc *emulator.TLSConfig) {
	if auth != nil {
		acl := "no ACL: every call allowed"
		if auth.ACL != "" {
			acl = "ACL " + auth.ACL
			if !strings.HasPrefix(auth.ACL, "@") {
				acl = "ACL given inline"
			}
		}
		file := "no auth file"
		if auth.File != "" {
			file = "auth file " + auth.File
		}
		fmt.Fprintf(w, "RPC auth: realm %q, %s, %s; %s\n", auth.Domain, auth.Algo, file, acl)
	}
	if tc != nil && tc.CertFile != "" {
		mutual := ""
		if tc.ClientCAFile != "" {
			mutual = "; client certificates required (" + tc.ClientCAFile + ")"
		}
		fmt.Fprintf(w, "TLS: certificate %s%s\n", tc.CertFile, mutual)
	}
}
