package daemon

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/internal/config"
)

// The speaker is wired at start: a reload that changes bgp (another
// neighbour, another address, a new withdraw_wait) is refused, not half
// applied to sessions that are up.
func TestBGPKeysNeedRestart(t *testing.T) {
	old := config.Defaults()
	for name, edit := range map[string]func(*config.Config){
		"on":        func(c *config.Config) { c.BGP.LocalAS = 64513 },
		"announce":  func(c *config.Config) { c.BGP.Announce = []string{"203.0.113.10/32"} },
		"neighbour": func(c *config.Config) { c.BGP.Neighbors = []config.BGPNeighbor{{Address: "198.51.100.1", AS: 64512}} },
		"drain":     func(c *config.Config) { c.BGP.Drain.WithdrawWait = time.Minute },
	} {
		next := config.Defaults()
		edit(next)
		if err := needsRestart(old, next); !errors.Is(err, ErrNeedsRestart) || !strings.Contains(err.Error(), "bgp") {
			t.Errorf("%s changed: needsRestart = %v, want ErrNeedsRestart naming bgp", name, err)
		}
	}
}

func TestSpeakerConfig(t *testing.T) {
	b := config.BGP{LocalAS: 64513, RouterID: "198.51.100.2", Announce: []string{"203.0.113.10", "2001:db8::10/128"},
		Communities: []string{"64512:100"}, Neighbors: []config.BGPNeighbor{{Address: "198.51.100.1", AS: 64512, Password: "k"}}}
	c := speakerConfig(b)
	if c.LocalAS != 64513 || c.RouterID.String() != "198.51.100.2" || len(c.Prefixes) != 2 || c.Prefixes[0].String() != "203.0.113.10/32" ||
		len(c.Communities) != 1 || c.Communities[0] != 64512<<16|100 || len(c.Neighbors) != 1 || c.Neighbors[0].Password != "k" {
		t.Errorf("speakerConfig = %+v", c)
	}
}
