package main

import (
	"os"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/otactl/otactl/pkg/device/emulator"
	"github.com/otactl/otactl/pkg/transport/transporttest"
)

// Script commands for the secured-device scripts (secured_*.txtar).

// cmdMkPKI writes a CA, server and client certificates made now to DIR
// (file names in transporttest.PKI):
//
//	mkpki DIR
func cmdMkPKI(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: mkpki DIR")
	}
	transporttest.NewPKI(tsTB{ts}, ts.MkAbs(args[0]))
}

// cmdHTDigest appends a user to an htdigest file (a device's
// rpc.auth_file), hashed with ALG (MD5 or SHA-256), in realm RPC unless
// REALM is given:
//
//	htdigest FILE ALG USER PASSWORD [REALM]
func cmdHTDigest(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 4 || len(args) > 5 {
		ts.Fatalf("usage: htdigest FILE ALG USER PASSWORD [REALM]")
	}
	realm := emulator.DefaultAuthDomain
	if len(args) == 5 {
		realm = args[4]
	}
	line, err := emulator.HTDigestLine(args[1], args[2], realm, args[3])
	ts.Check(err)
	f, err := os.OpenFile(ts.MkAbs(args[0]), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	ts.Check(err)
	_, err = f.WriteString(line + "\n")
	ts.Check(err)
	ts.Check(f.Close())
}

// tsTB adapts a TestScript to the testing.TB that transporttest wants
// (only Helper and Fatal are used).
type tsTB struct{ ts *testscript.TestScript }

func (t tsTB) Helper()           {}
func (t tsTB) Fatal(args ...any) { t.ts.Fatalf("%v", args...) }
