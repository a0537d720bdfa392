package config

import (
	"fmt"
	"net"
	"net/url"
	"time"
)

// Fleet shares scan blocks with the other nodes of a fleet: each node
// serves the sources it blocked itself on Listen, over mutual TLS with
// certificates of PeerCA, and pulls its Peers' every PullInterval.
type Fleet struct {
	Listen       string        `mapstructure:"listen"`
	Cert         string        `mapstructure:"cert"`
	Key          string        `mapstructure:"key"`
	PeerCA       string        `mapstructure:"peer_ca"`
	Peers        []string      `mapstructure:"peers"`
	PullInterval time.Duration `mapstructure:"pull_interval"`
	BlockTTL     time.Duration `mapstructure:"block_ttl"`
	MaxBlocks    int           `mapstructure:"max_blocks"`
}

// Enabled reports whether the node shares blocks at all.
func (f Fleet) Enabled() bool { return f.Listen != "" || len(f.Peers) > 0 }

func (cfg *Config) validateFleet(c *checker) {
	f := cfg.Fleet
	if !f.Enabled() {
		return
	}
	if !cfg.Enforcement.NFTables {
		c.add("fleet", "needs enforcement.nftables: the shared blocks go into its blocklist")
	}
	if f.Listen != "" {
		if _, _, err := net.SplitHostPort(f.Listen); err != nil {
			c.add("fleet.listen", "not host:port: %v", err)
		}
	}
	c.file("fleet.cert", f.Cert, true)
	c.file("fleet.key", f.Key, true)
	c.file("fleet.peer_ca", f.PeerCA, true)
	seen := map[string]int{}
	for i, p := range f.Peers {
		path := fmt.Sprintf("fleet.peers[%d]", i)
		u, err := url.Parse(p)
		if err != nil || u.Scheme != "https" || u.Host == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") || u.User != nil || u.RawQuery != "" {
			c.add(path, "%q is not https://host:port", p)
			continue
		}
		if j, dup := seen[u.Host]; dup {
			c.add(path, "%s is already fleet.peers[%d]", u.Host, j)
		}
		seen[u.Host] = i
	}
	if d := f.PullInterval; d < time.Second || d > time.Minute {
		c.add("fleet.pull_interval", "must be between 1s and 1m, got %s", d)
	}
	if d := f.BlockTTL; d < time.Second || d > 24*time.Hour {
		c.add("fleet.block_ttl", "must be between 1s and 24h, got %s", d)
	}
	if n := f.MaxBlocks; n < 1 || n > 65535 {
		c.add("fleet.max_blocks", "must be between 1 and 65535 (the size of a blocked set), got %d", n)
	}
}
