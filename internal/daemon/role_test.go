package daemon

import (
	"errors"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/internal/config"
)

// TestRoleKeysNeedRestart: a reload cannot turn an appliance into a
// gateway, nor move a connector's tunnels; those take a restart.
func TestRoleKeysNeedRestart(t *testing.T) {
	old := config.Defaults()
	for name, edit := range map[string]func(*config.Config){
		"gateway":   func(c *config.Config) { c.Gateway.Listen = ":8443" },
		"connector": func(c *config.Config) { c.Connector.Allow = []string{"192.0.2.0/24:443"} },
	} {
		next := config.Defaults()
		edit(next)
		if err := needsRestart(old, next); !errors.Is(err, ErrNeedsRestart) {
			t.Errorf("%s changed: needsRestart = %v, want ErrNeedsRestart", name, err)
		}
	}
	if err := needsRestart(old, config.Defaults()); err != nil {
		t.Errorf("nothing changed: %v", err)
	}
}
