package daemon

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// TestReloadAppliesTLSKeys: the tls: keys are no start-only keys; a reload
// hands them to the components, which apply them without a restart.
func TestReloadAppliesTLSKeys(t *testing.T) {
	var mu sync.Mutex
	var got []policy.TLS
	a := &recorder{name: "certs", refuse: func(p *policy.Policy) bool {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, p.TLS)
		return false
	}}
	d, dir, _, stop := start(t, a)
	defer stop()
	path := filepath.Join(dir, "gatehouse.yaml")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b = append(b, "tls: {crl_stale: warn, session_tickets: false, ticket_rotation: 1h}\n"...)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.Reload(); err != nil {
		t.Fatalf("reload with changed tls keys: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []policy.TLS{
		{CRLStale: policy.CRLStaleFail, TicketRotation: 6 * time.Hour},
		{CRLStale: policy.CRLStaleWarn, SessionTicketsDisabled: true, TicketRotation: time.Hour},
	}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("components were given %+v, want %+v", got, want)
	}
}
