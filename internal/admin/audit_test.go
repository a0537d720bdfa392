package admin

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAuditFollowsRotation: after logrotate renames the audit log (and
// creates an empty one, or leaves none), the next line goes to the file at
// the configured path, not into the renamed one; a path that can no longer
// be opened fails the write instead of writing where nobody looks.
func TestAuditFollowsRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	a, err := OpenAudit(path)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	line := func(reason string) Entry {
		e := NewEntry(Principal{Transport: "unix", User: "root"}, ActReload, "global", nil)
		e.Result, e.Reason = "error", reason
		return e
	}
	if err := a.Record(line("before-rotation")); err != nil {
		t.Fatal(err)
	}
	// logrotate's default (create): rename, then a new empty file.
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := a.Record(line("after-create")); err != nil {
		t.Fatal(err)
	}
	// nocreate: renamed and nothing in its place; the daemon creates it.
	if err := os.Rename(path, path+".2"); err != nil {
		t.Fatal(err)
	}
	if err := a.Record(line("after-nocreate")); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{path + ".1": "before-rotation", path + ".2": "after-create", path: "after-nocreate"}
	for f, reason := range want {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(string(b), "\n"); n != 1 || !strings.Contains(string(b), reason) {
			t.Errorf("%s holds %q, want the one line %s", filepath.Base(f), b, reason)
		}
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("recreated audit log: %v %v, want mode 0600", fi, err)
	}
	// The path turned into something that is not a file: refused, and
	// nothing goes to the renamed file either.
	if err := os.Rename(path, path+".3"); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := a.Record(line("lost")); err == nil {
		t.Error("a line was reported written though the audit log path is a directory")
	}
	if b, _ := os.ReadFile(path + ".3"); strings.Contains(string(b), "lost") {
		t.Error("the line went into the rotated file")
	}
}
