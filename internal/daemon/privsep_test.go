package daemon

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/internal/config"
	"github.com/gatehouse-dmz/gatehouse/internal/testkit"
)

// TestTicketDirWithoutChown: the ticket directory is root's, mode 0707
// (the workers, as others, create and sync their files; no chown: the unit
// has no CAP_CHOWN), state_dir is left as it is and still passes
// CheckStateDir as root, and a state_dir every user can enter is warned
// about.
func TestTicketDirWithoutChown(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the daemon runs as root")
	}
	state := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(state, 0o755); err != nil {
		t.Fatal(err)
	}
	tickets := filepath.Join(state, "tls-tickets")
	var logs testkit.LogBuffer
	if err := ticketDir(tickets, slog.New(slog.NewTextHandler(&logs, nil))); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(state)
	if fi.Mode().Perm() != 0o755 {
		t.Errorf("state_dir %v, want it left drwxr-xr-x", fi.Mode())
	}
	if !strings.Contains(logs.String(), "state_dir can be entered by every user") {
		t.Errorf("no warning for a state_dir open to all:\n%s", logs.String())
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

// TestPrivsepKeysNeedRestart: the worker pool is built at start, so a
// reload that changes privsep, the worker count or the worker user is
// refused instead of being taken and ignored (status would name a user
// the workers do not run as).
func TestPrivsepKeysNeedRestart(t *testing.T) {
	old := config.Defaults()
	for name, edit := range map[string]func(*config.Config){
		"enforcement.privsep":     func(c *config.Config) { c.Enforcement.Privsep = !c.Enforcement.Privsep },
		"enforcement.workers":     func(c *config.Config) { c.Enforcement.Workers = c.Enforcement.Workers + 2 },
		"enforcement.worker_user": func(c *config.Config) { c.Enforcement.WorkerUser = "nobody" },
	} {
		next := config.Defaults()
		edit(next)
		if err := needsRestart(old, next); !errors.Is(err, ErrNeedsRestart) || !strings.Contains(err.Error(), name) {
			t.Errorf("%s changed: needsRestart = %v, want ErrNeedsRestart naming it", name, err)
		}
	}
}
