package daemon

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestTicketDirReachableOnlyThroughState: the ticket directory is root's,
// mode 0707 (the workers, as others, create and sync their files); a state_dir
// others could enter loses that access, so only root and the workers,
// through their descriptor, reach it. No chown: the unit has no CAP_CHOWN.
func TestTicketDirReachableOnlyThroughState(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the daemon runs as root")
	}
	state := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(state, 0o755); err != nil {
		t.Fatal(err)
	}
	tickets := filepath.Join(state, "tls-tickets")
	if err := ticketDir(tickets); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(state)
	if fi.Mode().Perm() != 0o750 {
		t.Errorf("state_dir %v, want drwxr-x--- (nothing for others)", fi.Mode())
	}
	fi, _ = os.Stat(tickets)
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != 0o707 || st.Uid != 0 {
		t.Errorf("tls-tickets %v uid %d, want drwx---rwx root", fi.Mode(), st.Uid)
	}
	if err := CheckStateDir(state); err != nil {
		t.Errorf("state_dir refused after ticketDir: %v", err)
	}
}
