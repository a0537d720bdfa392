package daemon

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestOwnedDirLetsWorkersReachTickets: the ticket directory becomes the
// workers'; a state_dir that is root's and 0700 (as the unit makes it)
// stays so: the workers reach their directory through the descriptor the
// pool passes, and the feeds stay out of reach.
func TestOwnedDirLetsWorkersReachTickets(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	state := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(state, "feeds"), 0o700); err != nil {
		t.Fatal(err)
	}
	tickets := filepath.Join(state, "tls-tickets")
	if err := ownedDir(tickets, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(state)
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != 0o700 || st.Gid != 0 || st.Uid != 0 {
		t.Errorf("state_dir %v uid %d gid %d, want drwx------ root:root", fi.Mode(), st.Uid, st.Gid)
	}
	fi, _ = os.Stat(tickets)
	st = fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != 0o700 || st.Uid != 65534 {
		t.Errorf("tls-tickets %v uid %d, want drwx------ 65534", fi.Mode(), st.Uid)
	}
}
