package main

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Comments name documents of this repository ("docs/protocol.md", or
// "docs/protocol.md, "Frame size"" for a section): each must exist, and
// each section named must be a heading of it (a heading that starts with
// the name, ignoring case and backquotes). Nothing may point outside the
// repository (the team's notes in ../shared are not part of it).
func TestCommentsNameDocumentsThatExist(t *testing.T) {
	root := filepath.Join("..", "..")
	ref := regexp.MustCompile(`docs/([a-z0-9_-]+\.md)(?:,\s*"([^"]+)")?`)
	outside := regexp.MustCompile(`\.\./shared|(?:^|[^/\w])(?:wire-protocol|device-semantics)\.md`)
	headings := map[string][]string{}
	heads := func(doc string) ([]string, bool) {
		if h, ok := headings[doc]; ok {
			return h, h != nil
		}
		b, err := os.ReadFile(filepath.Join(root, "docs", doc))
		if err != nil {
			headings[doc] = nil
			return nil, false
		}
		h := []string{}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "#") {
				h = append(h, strings.ToLower(strings.ReplaceAll(strings.TrimSpace(strings.TrimLeft(line, "#")), "`", "")))
			}
		}
		headings[doc] = h
		return h, true
	}
	refs := 0
	for _, dir := range []string{"pkg", "cmd", "internal"} {
		err := filepath.WalkDir(filepath.Join(root, dir), func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") {
				return err
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			// A reference may run over two comment lines.
			text := regexp.MustCompile(`\n\s*//\s*`).ReplaceAllString(string(b), " ")
			if m := outside.FindString(text); m != "" && !strings.HasSuffix(path, "docrefs_test.go") {
				t.Errorf("%s names %q, which is not in this repository: point to docs/protocol.md", path, m)
			}
			for _, m := range ref.FindAllStringSubmatch(text, -1) {
				refs++
				h, ok := heads(m[1])
				if !ok {
					t.Errorf("%s names docs/%s, which does not exist", path, m[1])
					continue
				}
				if m[2] == "" {
					continue
				}
				want := strings.ToLower(strings.ReplaceAll(m[2], "`", ""))
				found := false
				for _, hd := range h {
					if strings.HasPrefix(hd, want) {
						found = true
						break
					}
				}
				if !found {
					t.Errorf("%s names section %q of docs/%s, which has no such heading", path, m[2], m[1])
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if refs < 30 {
		t.Fatalf("found only %d references to docs/: the test would check nothing", refs)
	}
}
