package tunnel

import (
	"errors"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
)

// TestEnvironmentBinding: the gateway binds a connector's tunnels to the
// (tenant, environment) its certificate proves: a stream of
// acme/production goes down production's tunnels only, one of
// acme/development down development's only, and neither ever borrows the
// other's when its own are missing.
func TestEnvironmentBinding(t *testing.T) {
	r := newRig(t, nil)
	// Set before any connector dials: identify reads the map.
	r.connCA["acme/production"] = certstest.NewCA(t, "acme-production-connectors")
	r.connCA["acme/development"] = certstest.NewCA(t, "acme-development-connectors")
	delete(r.connCA, "acme")
	_, prod := r.connector("acme", r.connCA["acme/production"], 1, nil)
	r.waitTunnels("acme/production", 1)

	h := r.header("acme")
	h.Environment = "development"
	if _, err := r.roundTrip(h, "x"); !errors.Is(err, ErrNoTunnel) {
		t.Fatalf("acme/development without a connector of its own: %v, want ErrNoTunnel", err)
	}
	h.Environment = ""
	if _, err := r.roundTrip(h, "x"); !errors.Is(err, ErrNoTunnel) {
		t.Fatalf("acme without an environment: %v, want ErrNoTunnel", err)
	}
	_, dev := r.connector("acme", r.connCA["acme/development"], 1, nil)
	r.waitTunnels("acme/development", 1)
	for _, env := range []string{"production", "development", "production"} {
		h := r.header("acme")
		h.Environment = env
		if got, err := r.roundTrip(h, env); err != nil || got != map[string]string{"production": "PRODUCTION", "development": "DEVELOPMENT"}[env] {
			t.Fatalf("%s: %q %v", env, got, err)
		}
	}
	for name, s := range map[string]*served{"production": prod, "development": dev} {
		s.mu.Lock()
		for _, sh := range s.headers {
			if sh.Environment != name {
				t.Errorf("%s's connector carried a stream of environment %q", name, sh.Environment)
			}
		}
		if len(s.headers) == 0 {
			t.Errorf("%s's connector carried nothing", name)
		}
		s.mu.Unlock()
	}
}
