package bundle

import (
	"archive/zip"
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"hash/crc32"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func mustKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// The extra field as mos writes it (common/fwbundle/fw_bundle_zip.go):
// the id 0x293a and the length little-endian, then encoding/json of a
// map[string]any — compact, keys sorted — with each signature in standard
// base64 under "sigN".
func TestSignatureExtraFieldGolden(t *testing.T) {
	s := &Signatures{}
	s.Sig[0] = []byte{0x30, 6, 2, 1, 1, 2, 1, 2}
	s.Sig[2] = []byte{0x30, 6, 2, 1, 3, 2, 1, 4}
	field, err := SignatureExtraField(s.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	want, _ := hex.DecodeString("3a292d00" + hex.EncodeToString([]byte(`{"sig0":"MAYCAQECAQI=","sig2":"MAYCAQMCAQQ="}`)))
	if !bytes.Equal(field, want) {
		t.Fatalf("extra field\n got % x\nwant % x", field, want)
	}
	// mos's --extra-attr values share the object; they survive a parse
	// and marshal, in key order.
	s.Other = map[string]json.RawMessage{"zz": json.RawMessage(`1`), "abc": json.RawMessage(`"x"`)}
	if got := string(s.Marshal()); got != `{"abc":"x","sig0":"MAYCAQECAQI=","sig2":"MAYCAQMCAQQ=","zz":1}` {
		t.Fatalf("with other attributes: %s", got)
	}
	p, err := ParseSignatures(s.Marshal())
	if err != nil || !bytes.Equal(p.Marshal(), s.Marshal()) || len(p.Slots()) != 2 {
		t.Fatalf("re-parse: %v %s", err, p.Marshal())
	}
}

// manifestExtras returns the extra field of the first local header and of the
// central directory header of manifest.json.
func manifestExtras(t *testing.T, b []byte) (local, central []byte) {
	t.Helper()
	le := binary.LittleEndian
	n, x := int(le.Uint16(b[26:])), int(le.Uint16(b[28:]))
	local = b[30+n : 30+n+x]
	zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	if zr.File[0].Name != ManifestName {
		t.Fatalf("first entry %q", zr.File[0].Name)
	}
	return local, zr.File[0].Extra
}

var sigJSON = regexp.MustCompile(`^\{"sig0":"[A-Za-z0-9+/]+={0,2}","sig3":"[A-Za-z0-9+/]+={0,2}"\}$`)

func TestCreateSignedLikeMos(t *testing.T) {
	k0, k3 := mustKey(t), mustKey(t)
	b := createBundle(t, &CreateOptions{Signers: []crypto.Signer{k0, nil, nil, k3}})
	local, central := manifestExtras(t, b)
	if !bytes.Equal(local, central) {
		t.Fatalf("mos writes the same extra field in both headers:\nlocal   % x\ncentral % x", local, central)
	}
	if binary.LittleEndian.Uint16(local) != 0x293a || int(binary.LittleEndian.Uint16(local[2:])) != len(local)-4 {
		t.Fatalf("extra field header % x", local[:4])
	}
	if !sigJSON.Match(local[4:]) {
		t.Fatalf("extra field JSON %s", local[4:])
	}
	rd, err := NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	p := &SignaturePolicy{ReqMask: 0b1001}
	p.Keys[0], p.Keys[3] = &k0.PublicKey, &k3.PublicKey
	c, err := p.Check(rd.RawManifest(), rd.Signatures())
	if err != nil || c.Verified != 0b1001 || c.Present != 0b1001 {
		t.Fatalf("check %+v %v", c, err)
	}
	if _, err := Verify(bytes.NewReader(b)); err != nil {
		t.Fatalf("signed bundle does not verify: %v", err)
	}
}

func TestPolicyRule(t *testing.T) {
	k0, k1 := mustKey(t), mustKey(t)
	man := []byte("{\"platform\": \"esp32\"}\n")
	sign := func(keys ...*ecdsa.PrivateKey) []byte {
		s := &Signatures{}
		for i, k := range keys {
			if k != nil {
				sig, err := SignManifest(man, k)
				if err != nil {
					t.Fatal(err)
				}
				s.Sig[i] = sig
			}
		}
		return s.Marshal()
	}
	p := func(mask int) *SignaturePolicy {
		pp := &SignaturePolicy{ReqMask: mask}
		pp.Keys[0], pp.Keys[1] = &k0.PublicKey, &k1.PublicKey
		return pp
	}
	wrong := mustKey(t)
	for _, tc := range []struct {
		name  string
		mask  int
		field []byte
		ok    bool
		why   string
	}{
		{"ignored by default", -1, nil, true, ""},
		{"ignored even when bad", -1, sign(wrong), true, ""},
		{"zero refuses all", 0, sign(k0, k1), false, "accepts no update"},
		{"unsigned", 1, nil, false, "sig0 is required but missing"},
		{"key0 only, mask 1", 1, sign(k0), true, ""},
		{"key0 only, mask 3", 3, sign(k0), false, "sig1 is required but missing"},
		{"key1 only, mask 1", 1, sign(nil, k1), false, "sig0 is required but missing"},
		{"key1 only, mask 2", 2, sign(nil, k1), true, ""},
		{"both, mask 3", 3, sign(k0, k1), true, ""},
		{"wrong key", 1, sign(wrong), false, "sig0 does not verify with key0"},
		{"unconfigured key", 4, sign(nil, nil, k0), false, "key2 is required but not configured"},
		{"bit beyond the keys", 0x100, sign(k0), false, "only 8 keys"},
		{"garbage field", 1, []byte("not json"), false, "sig0 is required but missing"},
		{"not base64", 1, []byte(`{"sig0":"***"}`), false, "sig0 is required but missing"},
	} {
		_, err := p(tc.mask).Check(man, tc.field)
		if (err == nil) != tc.ok {
			t.Errorf("%s: err %v, want ok=%v", tc.name, err, tc.ok)
			continue
		}
		if err != nil && (!errors.Is(err, ErrSignature) || !strings.Contains(err.Error(), tc.why)) {
			t.Errorf("%s: err %v, want ErrSignature mentioning %q", tc.name, err, tc.why)
		}
	}
	// A manifest changed by one byte no longer verifies.
	field := sign(k0)
	bad := bytes.Replace(man, []byte("esp32"), []byte("esp33"), 1)
	if _, err := p(1).Check(bad, field); !errors.Is(err, ErrSignature) {
		t.Fatalf("tampered manifest: %v", err)
	}
}

// rawBundle builds a bundle the way mos does (archive/zip with the extra
// field in both headers, manifest indented by one space) from manifest
// bytes and an optional signature field.
func rawBundle(t *testing.T, man []byte, field []byte, app []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	add := func(name string, data, extra []byte) {
		w, err := zw.CreateRaw(&zip.FileHeader{Name: name, Method: zip.Store, CRC32: crc32.ChecksumIEEE(data),
			CompressedSize64: uint64(len(data)), UncompressedSize64: uint64(len(data)), Extra: extra})
		if err != nil {
			t.Fatal(err)
		}
		w.Write(data)
	}
	var extra []byte
	if field != nil {
		var err error
		if extra, err = SignatureExtraField(field); err != nil {
			t.Fatal(err)
		}
	}
	add(ManifestName, man, extra)
	add("app.bin", app, nil)
	if err := zw.SetComment("made like mos"); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func mosManifest(app []byte) []byte {
	m := &Manifest{Name: "app", Platform: "esp32", Version: "2.0.0", BuildID: "b1",
		Parts: map[string]*Part{"app": {Type: "app", Src: "app.bin", Size: Int64(int64(len(app)))}}}
	j, _ := json.Marshal(m)
	var out bytes.Buffer
	json.Indent(&out, j, "", " ")
	return out.Bytes()
}

func TestRewriteSignaturesKeepsEverythingElse(t *testing.T) {
	app := bytes.Repeat([]byte{0xa5, 0x5a}, 5000)
	man := mosManifest(app)
	k0, k1 := mustKey(t), mustKey(t)
	for _, start := range []struct {
		name  string
		field []byte
	}{{"unsigned", nil}, {"signed by key1 with an extra attribute", nil}} {
		t.Run(start.name, func(t *testing.T) {
			field := start.field
			if strings.HasPrefix(start.name, "signed") {
				s := &Signatures{Other: map[string]json.RawMessage{"note": json.RawMessage(`"kept"`)}}
				sig, _ := SignManifest(man, k1)
				s.Sig[1] = sig
				field = s.Marshal()
			}
			in := rawBundle(t, man, field, app)
			var out bytes.Buffer
			err := RewriteSignatures(bytes.NewReader(in), int64(len(in)), &out, func(m []byte, s *Signatures) error {
				if !bytes.Equal(m, man) {
					t.Fatalf("edit got other manifest bytes")
				}
				sig, err := SignManifest(m, k0)
				s.Sig[0] = sig
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			b := out.Bytes()
			// Go's zip reader (central directory) and the streaming reader
			// (local headers, as a device) both read the result.
			zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
			if err != nil {
				t.Fatal(err)
			}
			if zr.Comment != "made like mos" || len(zr.File) != 2 {
				t.Fatalf("comment %q, %d files", zr.Comment, len(zr.File))
			}
			for i, f := range zr.File {
				rc, err := f.Open()
				if err != nil {
					t.Fatal(err)
				}
				data, err := io.ReadAll(rc)
				if err != nil {
					t.Fatalf("%s: %v", f.Name, err)
				}
				if want := [][]byte{man, app}[i]; !bytes.Equal(data, want) {
					t.Fatalf("%s changed", f.Name)
				}
			}
			local, central := manifestExtras(t, b)
			if !bytes.Equal(local, central) {
				t.Fatalf("local and central extra differ")
			}
			rep, err := Verify(bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(rep.RawManifest, man) {
				t.Fatal("manifest bytes changed")
			}
			p := &SignaturePolicy{ReqMask: 1}
			p.Keys[0], p.Keys[1] = &k0.PublicKey, &k1.PublicKey
			c, err := p.Check(rep.RawManifest, rep.Signatures)
			if err != nil {
				t.Fatal(err)
			}
			want := uint8(1)
			if field != nil {
				want = 3
				if !strings.Contains(string(rep.Signatures), `"note":"kept"`) {
					t.Fatalf("other attribute lost: %s", rep.Signatures)
				}
			}
			if c.Verified != want {
				t.Fatalf("verified %b, want %b", c.Verified, want)
			}
			// Only the two extra fields of manifest.json changed size.
			oldLocal, oldCentral := manifestExtras(t, in)
			if grew := len(local) - len(oldLocal) + len(central) - len(oldCentral); len(b)-len(in) != grew {
				t.Fatalf("size grew by %d, the extra fields by %d", len(b)-len(in), grew)
			}
		})
	}
}

func TestRewriteSignaturesRefuses(t *testing.T) {
	app := []byte("app")
	man := mosManifest(app)
	good := rawBundle(t, man, nil, app)
	noop := func([]byte, *Signatures) error { return nil }
	var cut bytes.Buffer
	if err := RewriteSignatures(bytes.NewReader(good[:len(good)-5]), int64(len(good)-5), &cut, noop); err == nil {
		t.Fatal("truncated bundle rewritten")
	}
	// manifest.json not first.
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, _ := zw.CreateHeader(&zip.FileHeader{Name: "app.bin", Method: zip.Store})
	w.Write(app)
	w, _ = zw.CreateHeader(&zip.FileHeader{Name: ManifestName, Method: zip.Store})
	w.Write(man)
	zw.Close()
	err := RewriteSignatures(bytes.NewReader(buf.Bytes()), int64(buf.Len()), io.Discard, noop)
	if !errors.Is(err, ErrNotManifest) {
		t.Fatalf("manifest not first: %v", err)
	}
	// A compressed manifest.
	buf.Reset()
	zw = zip.NewWriter(&buf)
	w, _ = zw.Create(ManifestName)
	w.Write(man)
	zw.Close()
	err = RewriteSignatures(bytes.NewReader(buf.Bytes()), int64(buf.Len()), io.Discard, noop)
	if !errors.Is(err, ErrCompressed) {
		t.Fatalf("compressed manifest: %v", err)
	}
}

func TestSignFileInPlace(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "fw.zip")
	if err := CreateFile(path, testManifest(), testParts(), nil); err != nil {
		t.Fatal(err)
	}
	k2 := mustKey(t)
	sigs, err := SignFile(path, path, 2, k2)
	if err != nil {
		t.Fatal(err)
	}
	if got := sigs.Slots(); len(got) != 1 || got[0] != 2 {
		t.Fatalf("slots %v", got)
	}
	rep, err := VerifyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p := &SignaturePolicy{ReqMask: 4}
	p.Keys[2] = &k2.PublicKey
	if _, err := p.Check(rep.RawManifest, rep.Signatures); err != nil {
		t.Fatal(err)
	}
	if _, err := SignFile(path, path, 8, k2); err == nil {
		t.Fatal("slot 8 accepted")
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("temporary files left: %v", ents)
	}
}

// A signature made by openssl over the manifest bytes, placed in the
// field by hand, verifies; and keys openssl writes (plain and encrypted)
// are read.
func TestOpenSSLInterop(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl is not installed: skipping the check against signatures made by openssl")
	}
	dir := t.TempDir()
	run := func(args ...string) []byte {
		t.Helper()
		cmd := exec.Command("openssl", args...)
		cmd.Dir = dir
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("openssl %s: %v", strings.Join(args, " "), err)
		}
		return out
	}
	run("ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", "k.pem")
	run("ec", "-in", "k.pem", "-pubout", "-out", "pub.pem")
	app := []byte("app data")
	man := mosManifest(app)
	if err := os.WriteFile(filepath.Join(dir, "manifest.json"), man, 0o644); err != nil {
		t.Fatal(err)
	}
	sig := run("dgst", "-sha256", "-sign", "k.pem", "manifest.json")
	field := []byte(`{"sig0":"` + base64.StdEncoding.EncodeToString(sig) + `"}`)
	b := rawBundle(t, man, field, app)
	pubPEM, _ := os.ReadFile(filepath.Join(dir, "pub.pem"))
	pub, err := ParsePublicKey(pubPEM)
	if err != nil {
		t.Fatal(err)
	}
	p := &SignaturePolicy{ReqMask: 1}
	p.Keys[0] = pub
	rep, err := Verify(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Check(rep.RawManifest, rep.Signatures); err != nil {
		t.Fatalf("openssl signature: %v", err)
	}

	// Keys as openssl writes them.
	pass := func(string) ([]byte, error) { return []byte("s3cret pass"), nil }
	run("pkcs8", "-topk8", "-in", "k.pem", "-nocrypt", "-out", "p8.pem")
	run("pkcs8", "-topk8", "-in", "k.pem", "-v2", "aes-256-cbc", "-passout", "pass:s3cret pass", "-out", "p8aes.pem")
	run("pkcs8", "-topk8", "-in", "k.pem", "-v2", "aes-128-cbc", "-v2prf", "hmacWithSHA1", "-passout", "pass:s3cret pass", "-out", "p8sha1.pem")
	run("pkcs8", "-topk8", "-in", "k.pem", "-v2", "des3", "-passout", "pass:s3cret pass", "-out", "p8des3.pem")
	for _, f := range []string{"k.pem", "p8.pem", "p8aes.pem", "p8sha1.pem", "p8des3.pem"} {
		data, _ := os.ReadFile(filepath.Join(dir, f))
		k, err := ParsePrivateKey(data, f, pass)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if !k.PublicKey.Equal(pub) {
			t.Fatalf("%s: another key", f)
		}
		if IsEncryptedKey(data) != strings.HasPrefix(f, "p8") && f != "p8.pem" {
			t.Fatalf("%s: IsEncryptedKey wrong", f)
		}
	}
	data, _ := os.ReadFile(filepath.Join(dir, "p8aes.pem"))
	if _, err := ParsePrivateKey(data, "p8aes.pem", func(string) ([]byte, error) { return []byte("wrong"), nil }); !errors.Is(err, ErrPassphrase) {
		t.Fatalf("wrong passphrase: %v", err)
	}

	// openssl reads the keys otactl writes, encrypted or not.
	k := mustKey(t)
	for name, pw := range map[string][]byte{"ours.pem": nil, "ours-enc.pem": []byte("s3cret pass")} {
		pemData, err := PrivateKeyPEM(k, pw)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), pemData, 0o600); err != nil {
			t.Fatal(err)
		}
		out := run("pkey", "-in", name, "-passin", "pass:s3cret pass", "-pubout")
		got, err := ParsePublicKey(out)
		if err != nil || !got.Equal(&k.PublicKey) {
			t.Fatalf("%s: openssl reads another public key (%v)", name, err)
		}
		back, err := ParsePrivateKey(pemData, name, pass)
		if err != nil || !back.Equal(k) {
			t.Fatalf("%s: round trip: %v", name, err)
		}
	}
}

func TestParsePublicKeyForms(t *testing.T) {
	k := mustKey(t)
	b64, err := PublicKeyBase64(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pemData, _ := PublicKeyPEM(&k.PublicKey)
	der, _ := base64.StdEncoding.DecodeString(b64)
	for name, in := range map[string][]byte{"base64": []byte(b64 + "\n"), "pem": pemData, "der": der} {
		got, err := ParsePublicKey(in)
		if err != nil || !got.Equal(&k.PublicKey) {
			t.Errorf("%s: %v", name, err)
		}
	}
	priv, _ := PrivateKeyPEM(k, nil)
	if _, err := ParsePublicKey(priv); err == nil || !strings.Contains(err.Error(), "private key") {
		t.Errorf("private key taken as public: %v", err)
	}
	if _, err := ParsePublicKey([]byte("hello")); err == nil {
		t.Error("garbage taken as a key")
	}
}

func TestCreateTimeStable(t *testing.T) {
	// Signing does not change the manifest bytes Create writes.
	opts := &CreateOptions{Time: time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)}
	plain := createBundle(t, opts)
	signed := createBundle(t, &CreateOptions{Time: opts.Time, Signers: []crypto.Signer{mustKey(t)}})
	a, _ := NewReader(bytes.NewReader(plain))
	b, _ := NewReader(bytes.NewReader(signed))
	if !bytes.Equal(a.RawManifest(), b.RawManifest()) {
		t.Fatal("signing changed the manifest")
	}
}

// FuzzRewriteSignatures: any input either is refused or gives a bundle
// whose manifest bytes are the input's and whose signature field is the
// one asked for.
func FuzzRewriteSignatures(f *testing.F) {
	app := []byte("app")
	man := mosManifest(app)
	f.Add(createBundleF(f))
	f.Add(rawBundleF(f, man, []byte(`{"sig3":"AAAA","x":1}`), app))
	f.Add([]byte("PK\x05\x06" + strings.Repeat("\x00", 18)))
	f.Fuzz(func(t *testing.T, in []byte) {
		sig := []byte{0x30, 6, 2, 1, 1, 2, 1, 2}
		var seen []byte
		var out bytes.Buffer
		err := RewriteSignatures(bytes.NewReader(in), int64(len(in)), &out, func(m []byte, s *Signatures) error {
			seen = bytes.Clone(m)
			s.Sig[5] = sig
			return nil
		})
		if err != nil {
			return
		}
		rd, err := NewReader(bytes.NewReader(out.Bytes()))
		if err != nil {
			if _, perr := NewReader(bytes.NewReader(in)); perr == nil {
				t.Fatalf("the input reads but the output does not: %v", err)
			}
			return
		}
		if !bytes.Equal(rd.RawManifest(), seen) {
			t.Fatal("manifest bytes changed")
		}
		s, err := ParseSignatures(rd.Signatures())
		if err != nil || !bytes.Equal(s.Sig[5], sig) {
			t.Fatalf("signature field %q (%v)", rd.Signatures(), err)
		}
	})
}

func createBundleF(f *testing.F) []byte {
	var buf bytes.Buffer
	if err := Create(&buf, testManifest(), testParts(), nil); err != nil {
		f.Fatal(err)
	}
	return buf.Bytes()
}

func rawBundleF(f *testing.F, man, field, app []byte) []byte {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	extra, _ := SignatureExtraField(field)
	for _, e := range []struct {
		name        string
		data, extra []byte
	}{{ManifestName, man, extra}, {"app.bin", app, nil}} {
		w, err := zw.CreateRaw(&zip.FileHeader{Name: e.name, Method: zip.Store, CRC32: crc32.ChecksumIEEE(e.data),
			CompressedSize64: uint64(len(e.data)), UncompressedSize64: uint64(len(e.data)), Extra: e.extra})
		if err != nil {
			f.Fatal(err)
		}
		w.Write(e.data)
	}
	zw.Close()
	return buf.Bytes()
}

// Found by FuzzManifest: manifest.json's extra data ending in a malformed
// record (shorter than its length says, or fewer than 4 bytes) made
// RewriteSignatures append the new signature field after it, where no
// reader finds it, so `otactl bundle sign` wrote a bundle that a device
// takes as unsigned. The field now goes before the malformed tail.
func TestRewriteSignaturesMalformedExtraTail(t *testing.T) {
	app := []byte("app")
	man := mosManifest(app)
	sig := []byte{0x30, 6, 2, 1, 1, 2, 1, 2}
	for _, tail := range [][]byte{{0x01, 0x00, 0x09, 0x00, 'a', 'b'}, {0xca, 0xfe}} {
		var buf bytes.Buffer
		zw := zip.NewWriter(&buf)
		for _, e := range []struct {
			name        string
			data, extra []byte
		}{{ManifestName, man, append([]byte{0x0a, 0x00, 0x01, 0x00, 'k'}, tail...)}, {"app.bin", app, nil}} {
			w, err := zw.CreateRaw(&zip.FileHeader{Name: e.name, Method: zip.Store, CRC32: crc32.ChecksumIEEE(e.data),
				CompressedSize64: uint64(len(e.data)), UncompressedSize64: uint64(len(e.data)), Extra: e.extra})
			if err != nil {
				t.Fatal(err)
			}
			w.Write(e.data)
		}
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		err := RewriteSignatures(bytes.NewReader(buf.Bytes()), int64(buf.Len()), &out, func(_ []byte, s *Signatures) error {
			s.Sig[2] = sig
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		rd, err := NewReader(bytes.NewReader(out.Bytes()))
		if err != nil {
			t.Fatal(err)
		}
		s, err := ParseSignatures(rd.Signatures())
		if err != nil || !bytes.Equal(s.Sig[2], sig) {
			t.Fatalf("tail %q: the signed bundle's signature field is %q (%v)", tail, rd.Signatures(), err)
		}
		if _, err := Verify(bytes.NewReader(out.Bytes())); err != nil {
			t.Fatalf("tail %q: the signed bundle does not verify: %v", tail, err)
		}
	}
}
