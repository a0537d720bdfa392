package certs

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// TestSnapshotReadsOnlyWhatItWasHanded: a Snapshot answers from the
// content it holds, reports a file the enforcer could not read with the
// same kind of error, and never reads the disk for a path it was not
// given, even one that exists there.
func TestSnapshotReadsOnlyWhatItWasHanded(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "server.key")
	if err := os.WriteFile(key, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := NewSnapshot()
	s.Put(ReadFileForSnapshot(key), ReadFileForSnapshot(filepath.Join(dir, "gone.pem")))
	if b, err := s.ReadFile(key); err != nil || string(b) != "secret" {
		t.Fatalf("handed file: %q, %v", b, err)
	}
	if fi, err := s.Stat(key); err != nil || fi.Size() != 6 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("stat of a handed file: %v, %v", fi, err)
	}
	if _, err := s.ReadFile(filepath.Join(dir, "gone.pem")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a file missing for the enforcer: %v, want not exist", err)
	}
	other := filepath.Join(dir, "other.pem")
	if err := os.WriteFile(other, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReadFile(other); err == nil {
		t.Error("a file never handed over was read from the disk")
	}
	s.Keep([]string{key})
	if s.Len() != 1 {
		t.Errorf("after Keep: %d files, want 1", s.Len())
	}
}
