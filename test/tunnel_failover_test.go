package test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestConnectorGatewayFailover: a connector with tunnels to two gateway
// processes; one gateway is killed (SIGKILL, by its PID), and new sessions
// go on through the other without one failing; restarted, the killed
// gateway gets the connector's tunnels back. Both times are logged.
func TestConnectorGatewayFailover(t *testing.T) {
	tt := newTunnelTopo(t)
	gw2 := tt.startGateway2(t)
	acme2 := `gatehouse_tunnels_up{peer="acme",role="gateway"}`

	// acme's only connector now is one with 4 tunnels over both gateways.
	tt.connectorGateways = []string{tunGwInside + ":443", tunGw2 + ":443"}
	dual := tt.startConnector(t, "dual", "acme", tt.connLeaf["acme"], 4, "")
	tt.connectors["acme"].kill()
	tt.waitTunnels(t, "acme", 2)
	gw2.waitFor(t, "2 tunnels of acme on the second gateway", func() bool { return metricOf(t, gw2, acme2) == 2 })
	for _, port := range []string{"8443", "9443"} {
		if code, body := tt.curlAt(t, "acme", port, "/x"); code != 200 {
			t.Fatalf("through the gateway on %s: %d %q", port, code, body)
		}
	}

	pid := tt.gateway.cmd.Process.Pid
	tt.gateway.kill()
	killed := time.Now()
	t.Logf("killed gateway 1 (pid %d)", pid)
	// New sessions through the second gateway: none fails, although the
	// connector has just lost half its tunnels.
	for i := range 10 {
		code, body := tt.curlAt(t, "acme", "9443", "/x")
		if code != 200 {
			t.Fatalf("session %d through the surviving gateway: %d %q\nconnector:\n%s", i, code, body, dual.out.String())
		}
		if i == 0 {
			t.Logf("gateway 1 killed: first new session served by gateway 2 after %s", time.Since(killed).Round(time.Millisecond))
		}
	}
	lost := fmt.Sprintf(`gatehouse_tunnel_reconnects_total{gateway=%q}`, tunGwInside+":443")
	dual.waitFor(t, "the connector's redials to the killed gateway", func() bool { return metricOf(t, dual, lost) >= 1 })
	if code, _ := dual.get(t, "/readyz"); code != 200 {
		t.Errorf("the connector is not ready with a gateway left: %d", code)
	}

	// Gateway 1 back (its pinned XDP program adopted): the connector's
	// backoff brings its two tunnels back.
	restarted := time.Now()
	tt.gateway = launch(t, tt.gw.Command(binary(t), "run", "-c", tt.configs["gateway"]), "127.0.0.1:9477", nsClient(tt.gw))
	tt.waitTunnels(t, "acme", 2)
	t.Logf("gateway 1 restarted: ready and the connector's tunnels back after %s", time.Since(restarted).Round(time.Millisecond))
	if code, body := tt.curlAt(t, "acme", "8443", "/x"); code != 200 {
		t.Fatalf("through the restarted gateway: %d %q", code, body)
	}
}

// startGateway2 runs a second gateway in the gateway's namespace, acme's
// only: its tunnel port on tunGw2, its HTTPS listener on port 9443, no
// kernel layers (the first gateway's cover the namespace).
func (tt *tunnelTopo) startGateway2(t *testing.T) *daemonProc {
	t.Helper()
	server := tt.serverCA.Server(t, "gate.example")
	tunnelCert := tt.gwCA.Server(t, "gw2.example", tunGw2)
	state := filepath.Join(tt.dir, "gw2")
	cfg := fmt.Sprintf(`
state_dir: %[1]s
shutdown_grace: 2s
admin_socket: %[1]s/admin.sock
enforcement: {xdp: "off", nftables: false}
metrics: {listen: "127.0.0.1:9478"}
tenants:
  - {id: acme, client_ca: %[2]s/acme-ca.pem}
listeners:
  - {name: web, listen: ":9443", protocol: https, server_cert: %[3]s, server_key: %[4]s}
gateway:
  listen: "%[5]s:443"
  server_cert: %[6]s
  server_key: %[7]s
  connectors:
    - {tenant: acme, client_ca: %[8]s, crl: %[9]s}
  keepalive: {interval: 1s, timeout: 1s}
`, state, tt.dir, server.CertFile, server.KeyFile, tunGw2, tunnelCert.CertFile, tunnelCert.KeyFile, tt.connCA["acme"].CertFile, tt.crl)
	path := filepath.Join(tt.dir, "gateway2.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	tt.configs["gateway2"] = path
	return launch(t, tt.gw.Command(binary(t), "run", "-c", path), "127.0.0.1:9478", nsClient(tt.gw))
}
