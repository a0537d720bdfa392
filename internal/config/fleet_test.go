package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFleetConfig(t *testing.T) {
	dir := fixture(t)
	for _, f := range []string{"fleet.pem", "fleet.key", "fleet-ca.pem"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("placeholder\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	good := `
fleet:
  listen: "198.51.100.1:9478"
  cert: ${DIR}/fleet.pem
  key: ${DIR}/fleet.key
  peer_ca: ${DIR}/fleet-ca.pem
  peers: ["https://198.51.100.2:9478", "https://[2001:db8::2]:9478"]
`
	cfg, err := parseIn(dir, goodYAML+good, nil)
	if err != nil {
		t.Fatalf("good fleet refused: %v", err)
	}
	if f := cfg.Fleet; !f.Enabled() || f.PullInterval.Seconds() != 2 || f.BlockTTL.Minutes() != 10 || f.MaxBlocks != 4096 {
		t.Errorf("fleet defaults: %+v", f)
	}
	for _, tc := range []struct{ name, from, to, want string }{
		{"no cert", "  cert: ${DIR}/fleet.pem\n", "", "fleet.cert: required"},
		{"http peer", "https://198.51.100.2:9478", "http://198.51.100.2:9478", `fleet.peers[0]: "http://198.51.100.2:9478" is not https://host:port`},
		{"peer with a path", "https://198.51.100.2:9478", "https://198.51.100.2:9478/x", "fleet.peers[0]"},
		{"duplicate peer", `"https://[2001:db8::2]:9478"`, `"https://198.51.100.2:9478"`, "fleet.peers[1]: 198.51.100.2:9478 is already fleet.peers[0]"},
		{"pull too fast", "  peers:", "  pull_interval: 100ms\n  peers:", "fleet.pull_interval: must be between 1s and 1m"},
		{"ttl too long", "  peers:", "  block_ttl: 48h\n  peers:", "fleet.block_ttl: must be between 1s and 24h"},
		{"too many", "  peers:", "  max_blocks: 70000\n  peers:", "fleet.max_blocks"},
		{"without nftables", "fleet:\n", "enforcement: {nftables: false}\nfleet:\n", "fleet: needs enforcement.nftables"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			y := strings.Replace(good, tc.from, tc.to, 1)
			if tc.name == "without nftables" {
				y = strings.Replace(goodYAML, "enforcement:\n", "enforcement:\n  nftables: false\n", 1) + good
			}
			_, err := parseIn(dir, goodYAML+y, nil)
			if tc.name == "without nftables" {
				_, err = parseIn(dir, y, nil)
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}
