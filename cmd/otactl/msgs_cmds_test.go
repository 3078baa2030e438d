package main

import (
	"archive/zip"
	"bytes"
	"io"
	"os"
	"strings"

	"github.com/rogpeppe/go-internal/testscript"
)

// cmdExpandEnv writes SRC to DST with $VAR and ${VAR} replaced by the
// script's environment (a config file naming an emulator's ports):
//
//	expandenv SRC DST
func cmdExpandEnv(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: expandenv SRC DST")
	}
	ts.Check(os.WriteFile(ts.MkAbs(args[1]), []byte(os.Expand(ts.ReadFile(args[0]), ts.Getenv)), 0o644))
}

// cmdDeflate writes the zip archive SRC to DST with every entry compressed
// (Deflate), in the same order, as `zip -9` would:
//
//	deflate SRC DST
func cmdDeflate(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: deflate SRC DST")
	}
	r, err := zip.OpenReader(ts.MkAbs(args[0]))
	ts.Check(err)
	defer r.Close()
	var out bytes.Buffer
	w := zip.NewWriter(&out)
	for _, f := range r.File {
		rc, err := f.Open()
		ts.Check(err)
		dst, err := w.CreateHeader(&zip.FileHeader{Name: f.Name, Method: zip.Deflate})
		ts.Check(err)
		_, err = io.Copy(dst, rc)
		ts.Check(err)
		ts.Check(rc.Close())
	}
	ts.Check(w.Close())
	ts.Check(os.WriteFile(ts.MkAbs(args[1]), out.Bytes(), 0o644))
}

// cmdSubst sets VAR to VALUE with its first OLD replaced by NEW (an
// emulator's http:// address as https://):
//
//	subst VAR OLD NEW VALUE
func cmdSubst(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 4 {
		ts.Fatalf("usage: subst VAR OLD NEW VALUE")
	}
	if !strings.Contains(args[3], args[1]) {
		ts.Fatalf("subst: %q is not in %q", args[1], args[3])
	}
	ts.Setenv(args[0], strings.Replace(args[3], args[1], args[2], 1))
}
