package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// goodWith writes testdata/check/good.yaml with text replaced, pairwise.
func goodWith(t *testing.T, fromTo ...string) string {
	t.Helper()
	good, err := os.ReadFile("testdata/check/good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(fromTo); i += 2 {
		if !bytes.Contains(good, []byte(fromTo[i])) {
			t.Fatalf("good.yaml lacks %q", fromTo[i])
		}
		good = bytes.Replace(good, []byte(fromTo[i]), []byte(fromTo[i+1]), 1)
	}
	path := filepath.Join(t.TempDir(), "test.yaml")
	if err := os.WriteFile(path, good, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

const enforcementLine = "enforcement:\n  mode: strict"

// TestCheckRefusesUnusableStateDir: a state_dir that is a file, or lies
// below one, or holds a file where the daemon keeps a directory
// (state_dir/feeds, state_dir/tls-tickets), fails check, named, as it
// fails run (daemon TestNewRefusesUnusableStateDir).
func TestCheckRefusesUnusableStateDir(t *testing.T) {
	file := filepath.Join(t.TempDir(), "state")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := map[string]string{file: file, filepath.Join(file, "below"): filepath.Join(file, "below")}
	for _, sub := range []string{"feeds", "tls-tickets"} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, sub), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		cases[dir] = filepath.Join(dir, sub)
	}
	for dir, named := range cases {
		path := goodWith(t, "state_dir: /var/lib/gatehouse", "state_dir: "+dir)
		_, _, err := runCLI("check", "-c", path)
		var ee exitError
		if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(ee.msg, "state_dir "+named) || !strings.Contains(ee.msg, "not a directory") {
			t.Errorf("check with state_dir %s: want exit 1 naming %s, got %v", dir, named, err)
		}
	}
}

// TestCheckRefusesPinDirOffBPFFS: with XDP on, a pin_dir that is not on a
// bpffs fails check (run would refuse it when it loads XDP).
func TestCheckRefusesPinDirOffBPFFS(t *testing.T) {
	dir := t.TempDir()
	path := goodWith(t, enforcementLine, "enforcement:\n  pin_dir: "+dir+"\n  mode: strict")
	_, _, err := runCLI("check", "-c", path)
	var ee exitError
	if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(ee.msg, "enforcement.pin_dir") || !strings.Contains(ee.msg, "not on a bpf filesystem") {
		t.Fatalf("check with pin_dir %s: want exit 1 naming enforcement.pin_dir, got %v", dir, err)
	}
}
