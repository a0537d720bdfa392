package config

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// nodeShared is the fleet's shared file: goodYAML with BGP on.
var nodeShared = strings.Replace(goodYAML, "interface: veth-dmz", "interface: eth-shared", 1) + bgpYAML

func writeNode(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "node.yaml")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestNodeOverlay: the overlay named by GATEHOUSE_NODE_CONFIG sets the
// node-local keys over the shared file, the environment wins over both,
// and the config says which keys came from where.
func TestNodeOverlay(t *testing.T) {
	node := writeNode(t, "interface: eth7\nmetrics:\n  listen: 198.51.100.7:9477\nbgp: {router_id: 198.51.100.7}\n")
	cfg, err := parse(t, nodeShared, map[string]string{
		NodeConfigEnv:                node,
		"GATEHOUSE_METRICS_LISTEN":   "198.51.100.8:9477",
		"GATEHOUSE_SHUTDOWN_GRACE":   "20s",
		"GATEHOUSE_UNRELATED_THINGS": "x",
	})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Interface != "eth7" || cfg.BGP.RouterID != "198.51.100.7" {
		t.Errorf("overlay not applied: interface %q router id %q", cfg.Interface, cfg.BGP.RouterID)
	}
	if cfg.Metrics.Listen != "198.51.100.8:9477" {
		t.Errorf("metrics.listen %q: the environment must win over the overlay", cfg.Metrics.Listen)
	}
	if got, want := cfg.FromNode(), []string{"bgp.router_id", "interface", "metrics.listen"}; !slices.Equal(got, want) {
		t.Errorf("FromNode %v, want %v", got, want)
	}
	if got, want := cfg.FromEnv(), []string{"metrics.listen", "shutdown_grace"}; !slices.Equal(got, want) {
		t.Errorf("FromEnv %v, want %v", got, want)
	}
	if cfg.NodeConfig() != node {
		t.Errorf("NodeConfig %q", cfg.NodeConfig())
	}
	// Without the variable nothing is read.
	cfg, err = parse(t, nodeShared, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Interface != "eth-shared" || cfg.NodeConfig() != "" || len(cfg.FromNode()) != 0 {
		t.Errorf("no overlay: interface %q node %q %v", cfg.Interface, cfg.NodeConfig(), cfg.FromNode())
	}
}

// TestNodeOverlayRefusesFleetKeys: an overlay may set the node-local keys
// only. Anything of the fleet's policy is refused with its path, all at
// once, and nothing of the overlay is half-applied into a config.
func TestNodeOverlayRefusesFleetKeys(t *testing.T) {
	for _, tc := range []struct{ name, overlay, want string }{
		{"enforcement", "interface: eth7\nenforcement: {mode: listeners}\n", "enforcement.mode: set in node config"},
		{"tenants", "tenants: [{id: evil, client_ca: /x.pem}]\n", "tenants: set in node config"},
		{"static ranges", "static_ranges: [0.0.0.0/0]\n", "static_ranges: set in node config"},
		{"tls", "tls: {session_tickets: false}\n", "tls.session_tickets: set in node config"},
		{"bgp beyond the router id", "bgp: {router_id: 198.51.100.7, local_as: 64999}\n", "bgp.local_as: set in node config"},
		{"not yaml", "interface: [\n", "node config"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			node := writeNode(t, tc.overlay)
			_, err := parse(t, nodeShared, map[string]string{NodeConfigEnv: node})
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), node) {
				t.Fatalf("got %v, want a refusal with %q naming %s", err, tc.want, node)
			}
		})
	}
	_, err := parse(t, nodeShared, map[string]string{NodeConfigEnv: "/nonexistent/node.yaml"})
	if err == nil || !strings.Contains(err.Error(), "node config") {
		t.Fatalf("missing overlay: %v, want an error", err)
	}
}
