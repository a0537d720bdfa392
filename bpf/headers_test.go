package bpf

import (
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// TestVendoredHeadersPinned: every header under include/ is listed in
// include/SHA256SUMS with its digest, and nothing listed is missing, so
// a header changed by hand (or by an update that forgot the sums) fails.
func TestVendoredHeadersPinned(t *testing.T) {
	sums, err := os.ReadFile(filepath.Join("include", "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(sums)), "\n") {
		sum, name, ok := strings.Cut(line, "  ")
		if !ok {
			t.Fatalf("SHA256SUMS: bad line %q", line)
		}
		want[name] = sum
	}
	seen := map[string]bool{}
	err = filepath.WalkDir("include", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		name := strings.TrimPrefix(filepath.ToSlash(path), "include/")
		switch name {
		case "SHA256SUMS", "README.md", "update.sh":
			return nil
		}
		seen[name] = true
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(data)
		if w, ok := want[name]; !ok {
			t.Errorf("%s: not pinned in SHA256SUMS", path)
		} else if got := hex.EncodeToString(sum[:]); got != w {
			t.Errorf("%s: SHA-256 %s, pinned %s", path, got, w)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for name := range want {
		if !seen[name] {
			t.Errorf("include/%s: pinned but missing", name)
		}
	}
}

// TestGenerateUsesVendoredHeadersOnly runs clang's dependency scan with
// the flags of each go:generate line in gen.go: every header it reads
// must be a file of this directory, none of the machine's.
func TestGenerateUsesVendoredHeadersOnly(t *testing.T) {
	clang := netns.RequireTool(t, "clang", "clang")
	src, err := os.ReadFile("gen.go")
	if err != nil {
		t.Fatal(err)
	}
	lines := regexp.MustCompile(`(?m)^//go:generate go tool bpf2go .* (\S+\.c) -- (.*)$`).FindAllStringSubmatch(string(src), -1)
	if len(lines) == 0 {
		t.Fatal("no bpf2go line in gen.go")
	}
	here, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range lines {
		args := append([]string{"-target", "bpfel", "-M"}, strings.Fields(m[2])...)
		out, err := exec.Command(clang, append(args, m[1])...).CombinedOutput()
		if err != nil {
			t.Fatalf("clang %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		deps := strings.Fields(strings.NewReplacer("\\\n", " ").Replace(string(out)))
		if len(deps) < 3 {
			t.Fatalf("clang -M printed no dependencies: %q", out)
		}
		for _, dep := range deps[2:] { // after "gatehouse.o:" and the source
			abs := dep
			if !filepath.IsAbs(abs) {
				abs = filepath.Join(here, dep)
			}
			if rel, err := filepath.Rel(here, abs); err != nil || strings.HasPrefix(rel, "..") {
				t.Errorf("%s (flags %s) reads %s, outside bpf/", m[1], m[2], dep)
			}
		}
	}
}
