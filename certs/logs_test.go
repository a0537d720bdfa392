package certs

import (
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/internal/testkit"
)

// A generation the daemon applies is the daemon's to log (once, for every
// layer): the certificates layer logs it at debug and, refused, returns an
// error that does not name the layer again ("apply generation 7 to certs:"
// is the daemon's). What the manager reloads on its own it logs itself
// (TestWatchServerCert).
func TestApplyLeavesTheLogToTheDaemon(t *testing.T) {
	k := newPKI(t)
	var logs testkit.LogBuffer
	m := newManager(t, Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))}, k.policy)
	if got := logs.String(); got != "" {
		t.Errorf("a generation applied logged at info:\n%s", got)
	}
	bad := *k.policy
	bad.Generation = 2
	bad.Tenants = append(bad.Tenants[:0:0], bad.Tenants...)
	missing := filepath.Join(t.TempDir(), "missing.pem")
	bad.Tenants[1].ClientCA = missing
	err := m.Apply(&bad)
	if err == nil {
		t.Fatal("a tenant CA that does not exist was applied")
	}
	if want := `tenant "globex": client CA: stat ` + missing + `: no such file or directory`; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	if strings.Contains(logs.String(), "tls state not loaded") {
		t.Errorf("a refused generation logged by the layer as well as by the daemon:\n%s", logs.String())
	}
}
