package announce

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
)

// A speaker refuses what it could only announce wrongly, before any
// session starts.
func TestNewRefuses(t *testing.T) {
	good := Config{LocalAS: 64513, RouterID: netip.MustParseAddr("198.51.100.2"),
		Neighbors: []Neighbor{{Address: netip.MustParseAddr("198.51.100.1"), AS: 64512}},
		Prefixes:  []netip.Prefix{netip.MustParsePrefix("203.0.113.10/32")}}
	for name, tc := range map[string]struct {
		edit func(*Config)
		says string
	}{
		"no AS":        {func(c *Config) { c.LocalAS = 0 }, "local AS"},
		"v6 router id": {func(c *Config) { c.RouterID = netip.MustParseAddr("2001:db8::1") }, "router id"},
		"no neighbour": {func(c *Config) { c.Neighbors = nil }, "no neighbours"},
		"wide prefix":  {func(c *Config) { c.Prefixes = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")} }, "not a host route"},
	} {
		c := good
		tc.edit(&c)
		_, err := New(context.Background(), c, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err == nil || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%s: New = %v, want an error saying %q", name, err, tc.says)
		}
	}
}
