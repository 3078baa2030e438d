package emulator

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"

	"github.com/otactl/otactl/pkg/ota/bundle"
)

// signed returns b with signatures by keys (slot → key) added.
func signed(t *testing.T, b []byte, keys map[int]*ecdsa.PrivateKey) []byte {
	t.Helper()
	var out bytes.Buffer
	err := bundle.RewriteSignatures(bytes.NewReader(b), int64(len(b)), &out, func(man []byte, s *bundle.Signatures) error {
		for slot, k := range keys {
			sig, err := bundle.SignManifest(man, k)
			if err != nil {
				return err
			}
			s.Sig[slot] = sig
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// tampered changes one byte of the manifest of b and fixes its CRC-32 in
// the local header, so that only a signature check can tell.
func tampered(t *testing.T, b []byte) []byte {
	t.Helper()
	b = bytes.Clone(b)
	le := binary.LittleEndian
	n, x, size := int(le.Uint16(b[26:])), int(le.Uint16(b[28:])), int(le.Uint32(b[18:]))
	man := b[30+n+x : 30+n+x+size]
	i := bytes.Index(man, []byte(`"build-`))
	if i < 0 {
		t.Fatal("no build id in the manifest")
	}
	man[i+1] = 'B' // "Build-…"
	le.PutUint32(b[14:], crc32.ChecksumIEEE(man))
	return b
}

// treeHash hashes every file (path and content) under dir.
func treeHash(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if de.IsDir() {
			lines = append(lines, rel+"/")
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		h := sha256.Sum256(b)
		lines = append(lines, rel+" "+hex.EncodeToString(h[:]))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	h := sha256.Sum256([]byte(fmt.Sprint(lines)))
	return hex.EncodeToString(h[:])
}

// writeWatch records the device's flash writes while on.
type writeWatch struct {
	mu     sync.Mutex
	on     bool
	writes []FlashWrite
}

func (w *writeWatch) hook(fw FlashWrite) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.on {
		w.writes = append(w.writes, fw)
	}
	return nil
}

func (w *writeWatch) start() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.on, w.writes = true, nil
}

func (w *writeWatch) stop() []FlashWrite {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.on = false
	return w.writes
}

func TestSignedUpdates(t *testing.T) {
	k0, k1, wrong := mustKey(t), mustKey(t), mustKey(t)
	for _, via := range []string{"url", "push"} {
		t.Run(via, func(t *testing.T) {
			watch := &writeWatch{}
			policy := &bundle.SignaturePolicy{ReqMask: 0b01}
			policy.Keys[0], policy.Keys[1] = &k0.PublicKey, &k1.PublicKey
			e := newEnv(t, func(c *Config) {
				c.Signing = policy
				c.Hooks.FlashWrite = watch.hook
			})
			n := 0
			send := func(b []byte) error {
				n++
				if via == "push" {
					return e.push(b, 2900, 300)
				}
				_, err := e.call("OTA.Update", map[string]any{"url": e.serve(fmt.Sprintf("/fw%d.zip", n), b), "commit_timeout": 300})
				return err
			}
			// A signed update is applied; commit it, so that the spare slot
			// (0) holds the factory firmware the refusals must not touch.
			if err := send(signed(t, makeBundle(t, fw{version: "2.0.0"}), map[int]*ecdsa.PrivateKey{0: k0})); err != nil {
				t.Fatalf("signed update: %v", err)
			}
			e.waitBoots(2)
			e.mustCall("OTA.Commit", nil)
			before, spare := e.bootState(), treeHash(t, e.d.fl.slotDir(0))

			b3 := makeBundle(t, fw{version: "3.0.0"})
			for _, tc := range []struct {
				name string
				b    []byte
			}{
				{"unsigned", b3},
				{"signed by the wrong key", signed(t, b3, map[int]*ecdsa.PrivateKey{0: wrong})},
				{"signed by key1 only", signed(t, b3, map[int]*ecdsa.PrivateKey{1: k1})},
				{"tampered after signing", tampered(t, signed(t, b3, map[int]*ecdsa.PrivateKey{0: k0}))},
			} {
				watch.start()
				err := send(tc.b)
				writes := watch.stop()
				wantErr(t, err, -1, "Signature check failed")
				if len(writes) > 0 {
					t.Errorf("%s: the device wrote to flash before refusing: %+v", tc.name, writes)
				}
				if got := treeHash(t, e.d.fl.slotDir(0)); got != spare {
					t.Errorf("%s: the spare slot changed", tc.name)
				}
				if bs := e.bootState(); bs != before {
					t.Errorf("%s: boot state %+v, want %+v", tc.name, bs, before)
				}
				if st := e.d.State(); st.OTAState != 2 || st.OTAMessage != "Signature check failed" {
					t.Errorf("%s: OTA.Status state %d %q", tc.name, st.OTAState, st.OTAMessage)
				}
			}
			// Still takes a good bundle afterwards.
			if err := send(signed(t, b3, map[int]*ecdsa.PrivateKey{0: k0, 1: k1})); err != nil {
				t.Fatalf("signed update after refusals: %v", err)
			}
			e.waitBoots(3)
			if v := e.info()["fw_version"]; v != "3.0.0" {
				t.Fatalf("version %v", v)
			}
		})
	}
}

// Key rotation (docs/security.md): a device with mask 0b11 needs both
// signatures; one with 0b01 only key 0's.
func TestSignatureKeyRotation(t *testing.T) {
	k0, k1 := mustKey(t), mustKey(t)
	b := makeBundle(t, fw{version: "2.0.0"})
	bundles := map[string][]byte{
		"key0":  signed(t, b, map[int]*ecdsa.PrivateKey{0: k0}),
		"key1":  signed(t, b, map[int]*ecdsa.PrivateKey{1: k1}),
		"both":  signed(t, b, map[int]*ecdsa.PrivateKey{0: k0, 1: k1}),
		"none":  b,
		"k1@k0": signed(t, b, map[int]*ecdsa.PrivateKey{0: k1}),
	}
	for _, tc := range []struct {
		mask   int
		accept map[string]bool
	}{
		{0b01, map[string]bool{"key0": true, "both": true}},
		{0b11, map[string]bool{"both": true}},
		{0b10, map[string]bool{"key1": true, "both": true}},
		{-1, map[string]bool{"key0": true, "key1": true, "both": true, "none": true, "k1@k0": true}},
		{0, map[string]bool{}},
	} {
		for name, bb := range bundles {
			t.Run(fmt.Sprintf("mask%d/%s", tc.mask, name), func(t *testing.T) {
				policy := &bundle.SignaturePolicy{ReqMask: tc.mask}
				policy.Keys[0], policy.Keys[1] = &k0.PublicKey, &k1.PublicKey
				e := newEnv(t, func(c *Config) { c.Signing = policy })
				_, err := e.call("OTA.Update", map[string]any{"url": e.serve("/fw.zip", bb), "commit_timeout": 300})
				if tc.accept[name] {
					if err != nil {
						t.Fatalf("refused: %v", err)
					}
					e.waitBoots(2)
					return
				}
				wantErr(t, err, -1, "Signature check failed")
			})
		}
	}
}

func mustKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := bundle.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}
