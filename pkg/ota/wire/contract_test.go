package wire

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The contract is written once: outside this package, no Go code (tests
// aside) spells a method name or a device message as a string literal, so
// the client and the emulator cannot drift apart. A literal that starts
// with a method name ("OTA.Update", or "OTA.Update: …") or contains one of
// the device's fixed messages fails this test; use the constants and the
// format functions of this package instead. (pkg/ota/bundle's Err* values
// are the bundle parser's messages, the other shared half of the contract.)
func TestNoContractLiteralsOutsideWire(t *testing.T) {
	root := filepath.Join("..", "..", "..")
	msgs := messageConstants(t)
	if len(msgs) < 20 {
		t.Fatalf("found only %d message constants in messages.go: the test would check nothing", len(msgs))
	}
	methodPrefixes := []string{"OTA.", "Sys.", "RPC."}
	checked := 0
	for _, dir := range []string{"pkg", "cmd"} {
		err := filepath.WalkDir(filepath.Join(root, dir), func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() {
				if d.Name() == "testdata" || filepath.ToSlash(path) == filepath.ToSlash(filepath.Join(root, "pkg", "ota", "wire")) {
					return filepath.SkipDir
				}
				return nil
			}
			if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return nil
			}
			checked++
			bundleDir := filepath.ToSlash(filepath.Dir(path)) == filepath.ToSlash(filepath.Join(root, "pkg", "ota", "bundle"))
			for _, lit := range stringLiterals(t, path) {
				for _, p := range methodPrefixes {
					if strings.HasPrefix(lit.value, p) {
						t.Errorf("%s: string literal %q starts with a method name: use the pkg/ota/wire constant", lit.pos, clipLit(lit.value))
					}
				}
				if lit.value == AppHealth {
					t.Errorf("%s: string literal %q is a method name: use wire.AppHealth", lit.pos, lit.value)
				}
				for name, m := range msgs {
					if bundleDir && strings.HasPrefix(lit.value, m+" ") {
						continue // a bundle message that begins with a device's word ("Invalid part src")
					}
					if strings.Contains(lit.value, m) {
						t.Errorf("%s: string literal %q holds the device message %q: use wire.%s", lit.pos, clipLit(lit.value), m, name)
					}
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if checked < 50 {
		t.Fatalf("checked only %d files under %s: wrong root?", checked, root)
	}
}

// The test above must be able to fail: a literal it is meant to catch is
// caught.
func TestContractLiteralCheckFindsLiterals(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "x.go")
	src := "package x\n\nimport \"fmt\"\n\ntype T struct{ A int `json:\"OTA.x\"` }\n\nvar a = \"OTA.Update\"\nvar b = fmt.Sprintf(\"x %s\", \"Wrong offset \")\n"
	if err := writeFile(path, src); err != nil {
		t.Fatal(err)
	}
	lits := stringLiterals(t, path)
	var got []string
	for _, l := range lits {
		got = append(got, l.value)
	}
	want := []string{"OTA.Update", "x %s", "Wrong offset "}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("literals %q, want %q (imports and struct tags skipped)", got, want)
	}
}

type literal struct {
	pos   token.Position
	value string
}

// stringLiterals returns the string literals of a Go file, except import
// paths and struct tags.
func stringLiterals(t *testing.T, path string) []literal {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
	if err != nil {
		t.Fatal(err)
	}
	skip := map[*ast.BasicLit]bool{}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.ImportSpec:
			skip[n.Path] = true
		case *ast.Field:
			if n.Tag != nil {
				skip[n.Tag] = true
			}
		}
		return true
	})
	var out []literal
	ast.Inspect(f, func(n ast.Node) bool {
		lit, ok := n.(*ast.BasicLit)
		if !ok || lit.Kind != token.STRING || skip[lit] {
			return true
		}
		v, err := strconv.Unquote(lit.Value)
		if err != nil {
			t.Fatalf("%s: %v", fset.Position(lit.Pos()), err)
		}
		out = append(out, literal{pos: fset.Position(lit.Pos()), value: v})
		return true
	})
	return out
}

// messageConstants reads the device's messages from messages.go: every
// Msg* constant, and the fixed words of the messages that carry a value.
func messageConstants(t *testing.T) map[string]string {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "messages.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, decl := range f.Decls {
		gd, ok := decl.(*ast.GenDecl)
		if !ok || gd.Tok != token.CONST {
			continue
		}
		for _, spec := range gd.Specs {
			vs := spec.(*ast.ValueSpec)
			for i, name := range vs.Names {
				if i >= len(vs.Values) {
					continue
				}
				lit, ok := vs.Values[i].(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					continue
				}
				v, _ := strconv.Unquote(lit.Value)
				switch {
				case strings.HasPrefix(name.Name, "Msg"):
					out[name.Name] = v
				case strings.HasSuffix(name.Name, "Prefix"):
					out[formatterOf(name.Name)] = strings.TrimSpace(v)
				}
			}
		}
	}
	return out
}

// formatterOf names the function that formats a message from the name of
// its prefix constant.
func formatterOf(prefix string) string {
	switch prefix {
	case "wrongOffsetPrefix":
		return "WrongOffset"
	case "shuttingDownPrefix":
		return "ShuttingDown"
	case "httpCodePrefix":
		return "InvalidHTTPResponse"
	}
	return prefix
}

func clipLit(s string) string {
	if len(s) > 60 {
		return s[:60] + "…"
	}
	return s
}

func writeFile(path, s string) error { return os.WriteFile(path, []byte(s), 0o644) }
