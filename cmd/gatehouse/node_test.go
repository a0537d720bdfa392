package main

import (
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
	"github.com/gatehouse-dmz/gatehouse/internal/config"
)

// TestCheckNodeConfig: check reads the node overlay as run does (from
// --node-config or GATEHOUSE_NODE_CONFIG), says which keys it set, shows
// the merged result with --show-merged, and refuses an overlay that sets a
// key of the fleet's policy, naming the key.
func TestCheckNodeConfig(t *testing.T) {
	dir := t.TempDir()
	node := filepath.Join(dir, "node.yaml")
	if err := os.WriteFile(node, []byte("interface: eth9\nmetrics: {listen: \"198.51.100.9:9477\"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, _, err := runCLI("check", "-c", "testdata/check/good.yaml", "--node-config", node)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "node config "+node+" sets: interface, metrics.listen\n") {
		t.Errorf("summary does not say what the node config set:\n%s", out)
	}
	out, _, err = runCLI("check", "-c", "testdata/check/good.yaml", "--node-config", node, "--show-merged")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"interface: eth9 # from node config " + node,
		"listen: 198.51.100.9:9477 # from node config " + node,
		"mode: strict\n", // from the shared file, unmarked
	} {
		if !strings.Contains(out, want) {
			t.Errorf("--show-merged lacks %q:\n%s", want, out)
		}
	}
	// The environment names the overlay as well, and its own keys win.
	t.Setenv(config.NodeConfigEnv, node)
	t.Setenv("GATEHOUSE_INTERFACE", "eth10")
	out, _, err = runCLI("check", "-c", "testdata/check/good.yaml", "--show-merged")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "interface: eth10 # from GATEHOUSE_INTERFACE") || !strings.Contains(out, "# from node config "+node) {
		t.Errorf("--show-merged with the environment:\n%s", out)
	}

	bad := filepath.Join(dir, "bad-node.yaml")
	if err := os.WriteFile(bad, []byte("interface: eth9\nenforcement: {mode: listeners}\nstatic_ranges: [0.0.0.0/0]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err = runCLI("check", "-c", "testdata/check/good.yaml", "--node-config", bad)
	var ee exitError
	if !errors.As(err, &ee) || ee.code != 1 ||
		!strings.Contains(ee.msg, "enforcement.mode: set in node config "+bad) || !strings.Contains(ee.msg, "static_ranges: set in node config "+bad) {
		t.Fatalf("overlay setting fleet keys: want exit 1 naming both keys, got %v", err)
	}
}

// TestCheckFleetFiles: check loads the fleet certificate, key and peer CA
// as run does: a file that exists but holds no certificate fails check.
func TestCheckFleetFiles(t *testing.T) {
	d := t.TempDir()
	p := func(name string) string { return filepath.Join(d, name) }
	ca := certstest.NewCA(t, "fleet CA")
	node := ca.Issue(t, &x509.Certificate{ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.ParseIP("198.51.100.1")}})
	serverOnly := ca.Server(t, "198.51.100.1")
	if err := os.WriteFile(p("junk.pem"), []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base, err := os.ReadFile("testdata/check/good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	check := func(leaf *certstest.Leaf, peerCA string) error {
		t.Helper()
		yaml := string(base) + "fleet:\n  listen: \"198.51.100.1:9478\"\n  cert: " + leaf.CertFile + "\n  key: " + leaf.KeyFile +
			"\n  peer_ca: " + peerCA + "\n  peers: [\"https://198.51.100.2:9478\"]\n"
		path := p("gatehouse.yaml")
		if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		_, _, err := runCLI("check", "-c", path)
		return err
	}
	if err := check(node, ca.CertFile); err != nil {
		t.Fatalf("good fleet files: %v", err)
	}
	var ee exitError
	if err := check(node, p("junk.pem")); !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(ee.msg, "fleet peer_ca") {
		t.Fatalf("a peer CA without a certificate: want exit 1 naming fleet peer_ca, got %v", err)
	}
	if err := check(serverOnly, ca.CertFile); !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(ee.msg, "serverAuth and clientAuth") {
		t.Fatalf("a fleet certificate for servers only: want exit 1, got %v", err)
	}
}
