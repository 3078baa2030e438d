package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/otactl/otactl/pkg/ota/bundle"
)

// Script commands for the signed-bundle scripts (signed_*.txtar).

// cmdTamper changes one byte of the manifest of a bundle (the first "b"
// of its build id becomes "B") and fixes the CRC-32 in manifest.json's
// local and central headers, so that only a signature check can tell:
//
//	tamper FILE
func cmdTamper(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: tamper FILE")
	}
	path := ts.MkAbs(args[0])
	b, err := os.ReadFile(path)
	ts.Check(err)
	le := binary.LittleEndian
	n, x, size := int(le.Uint16(b[26:])), int(le.Uint16(b[28:])), int(le.Uint32(b[18:]))
	man := b[30+n+x : 30+n+x+size]
	i := bytes.Index(man, []byte(`"build_id": "b`))
	if i < 0 {
		ts.Fatalf("tamper: no build id starting with b in %s", args[0])
	}
	man[i+len(`"build_id": "`)] = 'B'
	crc := crc32.ChecksumIEEE(man)
	le.PutUint32(b[14:], crc)
	// The central directory entry of manifest.json is the one at offset 0.
	for off := bytes.LastIndex(b, []byte{0x50, 0x4b, 1, 2}); off >= 0; off = bytes.LastIndex(b[:off], []byte{0x50, 0x4b, 1, 2}) {
		if le.Uint32(b[off+42:]) == 0 {
			le.PutUint32(b[off+16:], crc)
			break
		}
	}
	ts.Check(os.WriteFile(path, b, 0o644))
}

// cmdTreeHash prints one hash of every path and file content under DIR,
// to compare a directory before and after:
//
//	treehash DIR
func cmdTreeHash(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: treehash DIR")
	}
	root := ts.MkAbs(args[0])
	var lines []string
	err := filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if de.IsDir() {
			lines = append(lines, rel+"/")
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		h := sha256.Sum256(data)
		lines = append(lines, rel+" "+hex.EncodeToString(h[:]))
		return nil
	})
	ts.Check(err)
	sort.Strings(lines)
	h := sha256.Sum256([]byte(fmt.Sprint(lines)))
	fmt.Fprintf(ts.Stdout(), "%d entries %s\n", len(lines), hex.EncodeToString(h[:]))
}

// cmdManifestOut writes the exact bytes of a bundle's manifest.json (what
// a signature covers) to OUT:
//
//	manifestout FW.ZIP OUT
func cmdManifestOut(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: manifestout FW.ZIP OUT")
	}
	f, err := os.Open(ts.MkAbs(args[0]))
	ts.Check(err)
	defer f.Close()
	man, _, err := bundle.ReadSignatures(f)
	ts.Check(err)
	ts.Check(os.WriteFile(ts.MkAbs(args[1]), man, 0o644))
}

// cmdSetSig puts a DER signature made elsewhere (e.g. by openssl dgst
// -sign) into slot N of a bundle's signature field, base64-encoded as mos
// stores it:
//
//	setsig IN.ZIP N SIG.DER OUT.ZIP
func cmdSetSig(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 4 {
		ts.Fatalf("usage: setsig IN.ZIP N SIG.DER OUT.ZIP")
	}
	slot, err := strconv.Atoi(args[1])
	ts.Check(err)
	sig, err := os.ReadFile(ts.MkAbs(args[2]))
	ts.Check(err)
	in, err := os.ReadFile(ts.MkAbs(args[0]))
	ts.Check(err)
	var out bytes.Buffer
	ts.Check(bundle.RewriteSignatures(bytes.NewReader(in), int64(len(in)), &out, func(_ []byte, s *bundle.Signatures) error {
		s.Sig[slot] = sig
		return nil
	}))
	ts.Check(os.WriteFile(ts.MkAbs(args[3]), out.Bytes(), 0o644))
}
