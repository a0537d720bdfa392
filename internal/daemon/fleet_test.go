package daemon

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/internal/config"
)

// The fleet node (its listener, certificates and peers) is wired at
// start: a reload that changes the fleet keys is refused with their name,
// not applied to half of it.
func TestFleetKeysNeedRestart(t *testing.T) {
	old := config.Defaults()
	for name, edit := range map[string]func(*config.Config){
		"on":    func(c *config.Config) { c.Fleet.Peers = []string{"https://198.51.100.2:9478"} },
		"ttl":   func(c *config.Config) { c.Fleet.BlockTTL = time.Minute },
		"cert":  func(c *config.Config) { c.Fleet.Cert = "/etc/gatehouse/fleet/other.pem" },
		"pulls": func(c *config.Config) { c.Fleet.PullInterval = 5 * time.Second },
	} {
		next := config.Defaults()
		edit(next)
		if err := needsRestart(old, next); !errors.Is(err, ErrNeedsRestart) || !strings.Contains(err.Error(), "fleet") {
			t.Errorf("%s changed: needsRestart = %v, want ErrNeedsRestart naming fleet", name, err)
		}
	}
}
