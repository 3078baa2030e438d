package bundle

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/des"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"hash"
	"strings"
)

// Keys for signed bundles (docs/security.md): private keys in the PEM forms
// openssl, ssh-keygen -m PEM and mos use ("EC PRIVATE KEY", legacy
// encrypted or not; "PRIVATE KEY"; "ENCRYPTED PRIVATE KEY", PKCS#8 with
// PBES2), public keys as PEM "PUBLIC KEY" or as the base64 DER
// SubjectPublicKeyInfo a device's update.keyN holds.

// ErrPassphrase is returned when an encrypted key does not decrypt with
// the passphrase given.
var ErrPassphrase = errors.New("wrong passphrase")

// Passphrase returns the passphrase of an encrypted key; name says which
// key, for a prompt.
type Passphrase func(name string) ([]byte, error)

// Legacy PEM encryption (the "Proc-Type: 4,ENCRYPTED" header that older
// openssl and ssh-keygen -m PEM write) is insecure by today's standards
// and deprecated in Go, but mos reads it, so otactl does too.

// IsEncryptedKey reports whether the PEM data holds an encrypted private
// key (so that a caller knows a passphrase will be asked for).
func IsEncryptedKey(data []byte) bool {
	for {
		b, rest := pem.Decode(data)
		if b == nil {
			return false
		}
		if b.Type == "ENCRYPTED PRIVATE KEY" || (strings.HasSuffix(b.Type, "PRIVATE KEY") && x509.IsEncryptedPEMBlock(b)) {
			return true
		}
		data = rest
	}
}

// ParsePrivateKey reads an ECDSA P-256 private key from PEM data. name
// names the key in errors and for pass. pass is called only for an
// encrypted key; nil means encrypted keys are refused.
func ParsePrivateKey(data []byte, name string, pass Passphrase) (*ecdsa.PrivateKey, error) {
	n := 0
	for {
		b, rest := pem.Decode(data)
		if b == nil {
			break
		}
		n++
		data = rest
		var (
			key any
			err error
		)
		switch b.Type {
		case "EC PRIVATE KEY", "PRIVATE KEY":
			der := b.Bytes
			if x509.IsEncryptedPEMBlock(b) {
				pw, perr := askPass(pass, name)
				if perr != nil {
					return nil, perr
				}
				der, err = x509.DecryptPEMBlock(b, pw)
				if err != nil {
					return nil, fmt.Errorf("key %s: %w", name, ErrPassphrase)
				}
			}
			if b.Type == "EC PRIVATE KEY" {
				key, err = x509.ParseECPrivateKey(der)
			} else {
				key, err = x509.ParsePKCS8PrivateKey(der)
			}
		case "ENCRYPTED PRIVATE KEY":
			pw, perr := askPass(pass, name)
			if perr != nil {
				return nil, perr
			}
			var der []byte
			der, err = decryptPKCS8(b.Bytes, pw)
			if err != nil {
				return nil, fmt.Errorf("key %s: %w", name, err)
			}
			key, err = x509.ParsePKCS8PrivateKey(der)
			if err != nil {
				return nil, fmt.Errorf("key %s: %w", name, ErrPassphrase)
			}
		case "OPENSSH PRIVATE KEY":
			return nil, fmt.Errorf("key %s is in OpenSSH format: convert it with 'ssh-keygen -p -m PEM -f %s', or make one with 'otactl bundle keygen'", name, name)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("key %s: %w", name, err)
		}
		ek, ok := key.(*ecdsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("key %s is a %T key: devices verify ECDSA P-256 signatures only (make one with 'otactl bundle keygen')", name, key)
		}
		if err := checkP256(&ek.PublicKey); err != nil {
			return nil, fmt.Errorf("key %s: %w", name, err)
		}
		return ek, nil
	}
	if n == 0 {
		return nil, fmt.Errorf("key %s is not a PEM file", name)
	}
	return nil, fmt.Errorf("key %s holds no private key (PEM \"EC PRIVATE KEY\", \"PRIVATE KEY\" or \"ENCRYPTED PRIVATE KEY\")", name)
}

func askPass(pass Passphrase, name string) ([]byte, error) {
	if pass == nil {
		return nil, fmt.Errorf("key %s is encrypted and no passphrase can be asked for", name)
	}
	pw, err := pass(name)
	if err != nil {
		return nil, fmt.Errorf("passphrase of key %s: %w", name, err)
	}
	return pw, nil
}

// ParsePublicKey reads an ECDSA P-256 public key: PEM "PUBLIC KEY", the
// base64 DER SubjectPublicKeyInfo a device's update.keyN holds, or that DER
// itself.
func ParsePublicKey(data []byte) (*ecdsa.PublicKey, error) {
	var der []byte
	if b, _ := pem.Decode(data); b != nil {
		switch {
		case b.Type == "PUBLIC KEY":
			der = b.Bytes
		case strings.HasSuffix(b.Type, "PRIVATE KEY"):
			return nil, errors.New("this is a private key: give its public key (otactl bundle keygen prints it; or 'openssl ec -in KEY.pem -pubout')")
		default:
			return nil, fmt.Errorf("PEM %q is not a public key (want \"PUBLIC KEY\")", b.Type)
		}
	} else if s := strings.Join(strings.Fields(string(data)), ""); s != "" {
		if d, err := base64.StdEncoding.DecodeString(s); err == nil {
			der = d
		} else {
			der = data
		}
	}
	if len(der) == 0 {
		return nil, errors.New("empty public key")
	}
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("not a public key (PEM \"PUBLIC KEY\" or base64 DER SubjectPublicKeyInfo): %w", err)
	}
	if err := checkP256(k); err != nil {
		return nil, err
	}
	return k.(*ecdsa.PublicKey), nil
}

// PublicKeyBase64 returns the value of a device's update.keyN for pub:
// its DER SubjectPublicKeyInfo in standard base64.
func PublicKeyBase64(pub *ecdsa.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(der), nil
}

// PublicKeyPEM returns pub as PEM "PUBLIC KEY".
func PublicKeyPEM(pub *ecdsa.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// GenerateKey makes a new ECDSA P-256 private key.
func GenerateKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// PrivateKeyPEM encodes key as PEM: "EC PRIVATE KEY" (SEC 1, what openssl
// ecparam -genkey writes and mos reads) without a passphrase, or
// "ENCRYPTED PRIVATE KEY" (PKCS#8, PBES2: PBKDF2-HMAC-SHA256 and
// AES-256-CBC, which openssl and mos read) with one.
func PrivateKeyPEM(key *ecdsa.PrivateKey, passphrase []byte) ([]byte, error) {
	if len(passphrase) == 0 {
		der, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return nil, err
		}
		return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	enc, err := encryptPKCS8(der, passphrase)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: enc}), nil
}

// PKCS#8 encryption (RFC 5208, RFC 8018 PBES2).

var (
	oidPBES2      = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 5, 13}
	oidPBKDF2     = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 5, 12}
	oidScrypt     = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 11591, 4, 11}
	oidHMACSHA1   = asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 7}
	oidHMACSHA224 = asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 8}
	oidHMACSHA256 = asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 9}
	oidHMACSHA384 = asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 10}
	oidHMACSHA512 = asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 11}
	oidAES128CBC  = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 2}
	oidAES192CBC  = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 22}
	oidAES256CBC  = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 42}
	oidDESEDE3CBC = asn1.ObjectIdentifier{1, 2, 840, 113549, 3, 7}
)

type encryptedPrivateKeyInfo struct {
	Algo pkix.AlgorithmIdentifier
	Data []byte
}

type pbes2Params struct {
	KDF    pkix.AlgorithmIdentifier
	Scheme pkix.AlgorithmIdentifier
}

type pbkdf2Params struct {
	Salt      []byte
	Iter      int
	KeyLength int                      `asn1:"optional"`
	PRF       pkix.AlgorithmIdentifier `asn1:"optional"`
}

// pbkdf2Iterations is what encryptPKCS8 uses (openssl 3 uses 2048; more
// costs an attacker more and a signer only milliseconds).
const pbkdf2Iterations = 600000

func decryptPKCS8(der, passphrase []byte) ([]byte, error) {
	var info encryptedPrivateKeyInfo
	if rest, err := asn1.Unmarshal(der, &info); err != nil || len(rest) > 0 {
		return nil, errors.New("malformed encrypted PKCS#8 key")
	}
	if !info.Algo.Algorithm.Equal(oidPBES2) {
		return nil, fmt.Errorf("encrypted PKCS#8 key uses scheme %v; only PBES2 is supported: re-encrypt it with 'openssl pkcs8 -topk8 -v2 aes-256-cbc'", info.Algo.Algorithm)
	}
	var p pbes2Params
	if _, err := asn1.Unmarshal(info.Algo.Parameters.FullBytes, &p); err != nil {
		return nil, errors.New("malformed PBES2 parameters")
	}
	if p.KDF.Algorithm.Equal(oidScrypt) {
		return nil, errors.New("encrypted with scrypt, which otactl does not read: re-encrypt it with 'openssl pkcs8 -topk8 -v2 aes-256-cbc'")
	}
	if !p.KDF.Algorithm.Equal(oidPBKDF2) {
		return nil, fmt.Errorf("unsupported key derivation %v", p.KDF.Algorithm)
	}
	var kp pbkdf2Params
	if _, err := asn1.Unmarshal(p.KDF.Parameters.FullBytes, &kp); err != nil {
		return nil, errors.New("malformed PBKDF2 parameters")
	}
	var prf func() hash.Hash
	switch a := kp.PRF.Algorithm; {
	case len(a) == 0 || a.Equal(oidHMACSHA1):
		prf = sha1.New
	case a.Equal(oidHMACSHA224):
		prf = sha256.New224
	case a.Equal(oidHMACSHA256):
		prf = sha256.New
	case a.Equal(oidHMACSHA384):
		prf = sha512.New384
	case a.Equal(oidHMACSHA512):
		prf = sha512.New
	default:
		return nil, fmt.Errorf("unsupported PBKDF2 PRF %v", a)
	}
	var (
		keyLen  int
		newCiph func([]byte) (cipher.Block, error)
	)
	switch a := p.Scheme.Algorithm; {
	case a.Equal(oidAES128CBC):
		keyLen, newCiph = 16, aes.NewCipher
	case a.Equal(oidAES192CBC):
		keyLen, newCiph = 24, aes.NewCipher
	case a.Equal(oidAES256CBC):
		keyLen, newCiph = 32, aes.NewCipher
	case a.Equal(oidDESEDE3CBC):
		keyLen, newCiph = 24, des.NewTripleDESCipher
	default:
		return nil, fmt.Errorf("unsupported cipher %v: re-encrypt the key with 'openssl pkcs8 -topk8 -v2 aes-256-cbc'", a)
	}
	if kp.KeyLength != 0 && kp.KeyLength != keyLen {
		return nil, errors.New("malformed PBKDF2 parameters (key length)")
	}
	var iv []byte
	if _, err := asn1.Unmarshal(p.Scheme.Parameters.FullBytes, &iv); err != nil {
		return nil, errors.New("malformed cipher parameters")
	}
	if kp.Iter <= 0 || kp.Iter > 1<<24 {
		return nil, fmt.Errorf("PBKDF2 iteration count %d out of range", kp.Iter)
	}
	k, err := pbkdf2.Key(prf, string(passphrase), kp.Salt, kp.Iter, keyLen)
	if err != nil {
		return nil, err
	}
	block, err := newCiph(k)
	if err != nil {
		return nil, err
	}
	bs := block.BlockSize()
	if len(iv) != bs || len(info.Data) == 0 || len(info.Data)%bs != 0 {
		return nil, errors.New("malformed encrypted PKCS#8 key (sizes)")
	}
	out := make([]byte, len(info.Data))
	cipher.NewCBCDecrypter(block, iv).CryptBlocks(out, info.Data)
	pad := int(out[len(out)-1])
	if pad == 0 || pad > bs {
		return nil, ErrPassphrase
	}
	want := make([]byte, pad)
	for i := range want {
		want[i] = byte(pad)
	}
	if subtle.ConstantTimeCompare(out[len(out)-pad:], want) != 1 {
		return nil, ErrPassphrase
	}
	return out[:len(out)-pad], nil
}

func encryptPKCS8(der, passphrase []byte) ([]byte, error) {
	salt := make([]byte, 16)
	iv := make([]byte, aes.BlockSize)
	if _, err := rand.Read(salt); err != nil {
		return nil, err
	}
	if _, err := rand.Read(iv); err != nil {
		return nil, err
	}
	k, err := pbkdf2.Key(sha256.New, string(passphrase), salt, pbkdf2Iterations, 32)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	pad := aes.BlockSize - len(der)%aes.BlockSize
	plain := append(append([]byte(nil), der...), make([]byte, pad)...)
	for i := len(der); i < len(plain); i++ {
		plain[i] = byte(pad)
	}
	enc := make([]byte, len(plain))
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(enc, plain)
	null := asn1.RawValue{Tag: asn1.TagNull}
	kdfParams, err := asn1.Marshal(pbkdf2Params{Salt: salt, Iter: pbkdf2Iterations, PRF: pkix.AlgorithmIdentifier{Algorithm: oidHMACSHA256, Parameters: null}})
	if err != nil {
		return nil, err
	}
	ivDER, err := asn1.Marshal(iv)
	if err != nil {
		return nil, err
	}
	params, err := asn1.Marshal(pbes2Params{
		KDF:    pkix.AlgorithmIdentifier{Algorithm: oidPBKDF2, Parameters: asn1.RawValue{FullBytes: kdfParams}},
		Scheme: pkix.AlgorithmIdentifier{Algorithm: oidAES256CBC, Parameters: asn1.RawValue{FullBytes: ivDER}},
	})
	if err != nil {
		return nil, err
	}
	return asn1.Marshal(encryptedPrivateKeyInfo{
		Algo: pkix.AlgorithmIdentifier{Algorithm: oidPBES2, Parameters: asn1.RawValue{FullBytes: params}},
		Data: enc,
	})
}
