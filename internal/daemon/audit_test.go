package daemon

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/internal/config"
)

// TestOpenAuditCreatesStateDir: a daemon started on a state_dir that does
// not exist yet (check accepts it: the daemon creates it) opens its audit
// log there, owner-only, instead of refusing to start.
func TestOpenAuditCreatesStateDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "fresh", "state")
	d := &Daemon{}
	if err := d.openAudit(&config.Config{StateDir: dir}); err != nil {
		t.Fatalf("audit log in a fresh state_dir: %v", err)
	}
	defer d.closeAudit()
	fi, err := os.Stat(filepath.Join(dir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("audit log mode %v, want 0600", fi.Mode().Perm())
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("state_dir %v %v, want a 0700 directory", fi, err)
	}
	if err := CheckStateDir(dir); err != nil {
		t.Errorf("the created state_dir is refused: %v", err)
	}
}
