package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"
)

// The --connector site (documentation addresses only):
//
//	cloud 192.0.2.10 ── 192.0.2.1 gw 198.51.100.1 ── 198.51.100.2 fw 203.0.113.1 ── internal
//	 tenant client      XDP, nft   gateway :443       nft: no new     connector, HTTPS
//	 curl, s3270        listeners  tunnel port        inbound flow    backend, SOAP, TN3270
//
// The internal network opens no inbound port: the firewall forwards only the
// new connections the inside opens to port 443 and what answers them. The
// connector dials the gateway's tunnel port from inside, and the tenant's
// sessions come down its tunnels.
const (
	gwTunnelV4  = "198.51.100.1" // the gateway's tunnel port, facing the firewall
	fwOutsideV4 = "198.51.100.2"
	connMetrics = "127.0.0.1:9478" // the connector's metrics, inside internal
	connTunnels = 4
	connURI     = "spiffe://acme/connector"
	// gwWebPort is the gateway's HTTPS listener: 443 is its tunnel port,
	// the one port the enterprise's firewall lets the connector leave by.
	gwWebPort = "4443"
)

// connectorRoles are the --connector site's namespaces, in creation order.
var connectorRoles = []string{"cloud", "gw", "fw", "internal"}

// setupConnector builds the site with no inbound port, issues its
// certificates, starts the internal hosts, the gateway and the connector,
// and waits until the connector's tunnels are up at the gateway.
func (d *demo) setupConnector(ctx context.Context, bin string) error {
	fmt.Fprintln(d.out, "gatehouse demo (--connector): setting up a site with no inbound port")
	if err := d.prepareWorkDir(ctx, bin); err != nil {
		return err
	}

	if err := d.buildConnectorTopology(ctx); err != nil {
		return fmt.Errorf("topology: %w", err)
	}
	d.ok("namespaces %s-{%s}: cloud %s, gateway %s (listeners) / %s (tunnel port), firewall %s / %s, internal 203.0.113.0/24",
		"ghdemo-"+d.id, strings.Join(connectorRoles, ","), cloudV4, gateV4, gwTunnelV4, fwOutsideV4, insideV4)
	d.ok("firewall: table inet fw forwards no new connection towards internal, only new ones from it to port 443")

	if err := d.makeConnectorPKI(ctx); err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	d.ok("gatehouse certs: listeners' CA and server certificate %s, tenant %s client (%s), tunnel CA and gateway certificate %s, acme connector CA and certificate (%s), internal CA",
		gateName, tenant, tenantURI, gwTunnelV4, connURI)

	if err := d.mountBPFFS(ctx); err != nil {
		return err
	}
	if err := d.startBackends(ctx); err != nil {
		return fmt.Errorf("internal hosts: %w", err)
	}
	d.ok("internal hosts: HTTPS %s, SOAP %s, TN3270 %s", httpsAddr, soapAddr, tn3270Addr)

	if err := d.writeConnectorConfigs(); err != nil {
		return err
	}
	for _, cfg := range []string{d.config, d.connConfig} {
		if out, err := d.cmd(ctx, "", d.bin, "check", "-c", cfg); err != nil {
			return fmt.Errorf("gatehouse check: %w\n%s", err, out)
		}
	}
	d.ok("gatehouse check: gateway %s and connector %s are valid", d.config, d.connConfig)

	if err := d.startDaemon(ctx); err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	d.ok("gatehouse run (gateway) in %s: ready (pid %d, log %s)", d.ns["gw"], d.daemon.Process.Pid, d.log)

	d.connLog = d.path("connector.log")
	c, _, err := d.startGatehouse(ctx, "internal", d.connConfig, d.connLog, connMetrics)
	if err != nil {
		return fmt.Errorf("connector: %w", err)
	}
	d.ok("gatehouse run (connector) in %s: ready, it dialled out (pid %d, log %s)", d.ns["internal"], c.Process.Pid, d.connLog)

	up := fmt.Sprintf(`gatehouse_tunnels_up\{peer="%s",role="gateway"\}`, tenant)
	var n float64
	if !waitUntil(ctx, 20*time.Second, func() bool { n = d.metric(ctx, up); return n == connTunnels }) {
		return fmt.Errorf("gateway: %v tunnels of %s up after 20s, want %d", n, tenant, connTunnels)
	}
	d.ok("the gateway holds %d tunnels of tenant %s, each opened from inside", connTunnels, tenant)
	return nil
}

// buildConnectorTopology creates the namespaces and links of the site, the
// routes, and the enterprise's firewall.
func (d *demo) buildConnectorTopology(ctx context.Context) error {
	if err := d.addNamespaces(ctx, connectorRoles); err != nil {
		return err
	}
	err := d.addLinks(ctx, []link{
		{"cloud", "eth0", "gw", outsideIf},
		{"gw", "inside", "fw", "outside"},
		{"fw", "inside", "internal", "eth0"},
	}, map[string][]string{
		"cloud/eth0":      {cloudV4 + "/24"},
		"gw/" + outsideIf: {gateV4 + "/24"},
		"gw/inside":       {gwTunnelV4 + "/24"},
		"fw/outside":      {fwOutsideV4 + "/24"},
		"fw/inside":       {insideV4 + "/24"},
		"internal/eth0":   {"203.0.113.10/24", "203.0.113.20/24", "203.0.113.30/24"},
	})
	if err != nil {
		return err
	}
	for _, r := range [][]string{
		{"internal", "route", "add", "default", "via", insideV4},
		// The gateway answers the connector's address: it is routed, not
		// hidden behind NAT, so only the firewall stands in the way.
		{"gw", "route", "add", "203.0.113.0/24", "via", fwOutsideV4},
		{"fw", "route", "add", "192.0.2.0/24", "via", gwTunnelV4},
	} {
		if _, err := d.cmd(ctx, "", "ip", append([]string{"-n", d.ns[r[0]]}, r[1:]...)...); err != nil {
			return err
		}
	}
	if _, err := d.cmd(ctx, "fw", "sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
		return err
	}
	// The enterprise's firewall: what the inside opens to port 443 and its
	// answers pass; every other new flow is counted and dropped.
	ruleset := `table inet fw {
  chain forward {
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    iifname "inside" tcp dport 443 ct state new accept
    iifname "outside" ct state new counter name inbound_dropped drop
  }
  counter inbound_dropped {}
}
`
	c := d.command(ctx, "fw", "nft", "-f", "-")
	c.Stdin = strings.NewReader(ruleset)
	if out, err := c.CombinedOutput(); err != nil {
		return fmt.Errorf("firewall ruleset: %w: %s", err, out)
	}
	hosts := fmt.Sprintf("127.0.0.1 localhost\n::1 localhost\n%s %s\n", gateV4, gateName)
	return d.writeHosts([]string{"cloud"}, hosts)
}

// makeConnectorPKI issues the site's certificates with `gatehouse certs`:
// the listeners' CA and server certificate, the tenant's CA and client
// certificate, the tunnel port's CA and certificate (the connector pins
// that CA), a CA for acme's connectors and the connector's certificate
// (the gateway's trust list apart from the tenants'), and the internal CA.
func (d *demo) makeConnectorPKI(ctx context.Context) error {
	p := d.path("pki")
	steps := [][]string{
		{"certs", "init-ca", "--dir", p + "/gatehouse-ca", "--cn", "gatehouse demo CA"},
		{"certs", "issue", "--ca", p + "/gatehouse-ca", "--server", "--dns", gateName, "--ip", gateV4, "--out", p + "/server"},
		{"certs", "init-ca", "--dir", p + "/acme-ca", "--cn", "acme tenant CA"},
		{"certs", "issue", "--ca", p + "/acme-ca", "--client", "--tenant", tenant, "--uri", tenantURI, "--out", p + "/acme-cloud"},
		{"certs", "init-ca", "--dir", p + "/tunnel-ca", "--cn", "gatehouse demo tunnel CA"},
		{"certs", "issue", "--ca", p + "/tunnel-ca", "--server", "--dns", "tunnel.demo.example", "--ip", gwTunnelV4, "--out", p + "/tunnel"},
		{"certs", "init-ca", "--dir", p + "/acme-connector-ca", "--cn", "acme connector CA"},
		{"certs", "issue", "--ca", p + "/acme-connector-ca", "--client", "--tenant", tenant, "--uri", connURI, "--out", p + "/acme-connector"},
		{"certs", "init-ca", "--dir", p + "/internal-ca", "--cn", "internal demo CA"},
		{"certs", "issue", "--ca", p + "/internal-ca", "--server", "--dns", "orders.internal.example", "--ip", strings.Split(httpsAddr, ":")[0], "--out", p + "/backend"},
	}
	for _, args := range steps {
		if _, err := d.cmd(ctx, "", d.bin, args...); err != nil {
			return err
		}
	}
	return nil
}

// allowList is the connector's allow-list: each internal service as
// ADDRESS/32:PORT.
func allowList() []string {
	var l []string
	for _, a := range []string{httpsAddr, soapAddr, tn3270Addr} {
		host, port, _ := strings.Cut(a, ":")
		l = append(l, host+"/32:"+port)
	}
	return l
}

// writeConnectorConfigs writes the gateway's configuration (listeners
// without routes, XDP and nftables on its cloud side, the tunnel port) and
// the connector's (the routes, on loopback listeners of the same names, and
// an allow-list of exactly the three internal services).
func (d *demo) writeConnectorConfigs() error {
	p := d.path("pki")
	gw := fmt.Sprintf(`# gatehouse demo gateway (written by test/demo --connector)
interface: %[1]s
state_dir: %[2]s/state
admin_socket: %[2]s/admin.sock
shutdown_grace: 2s
enforcement:
  xdp: auto
  pin_dir: %[3]s/gatehouse
  nftables: true
  mode: listeners
  scan_block: {distinct_ports: 0}
metrics: {listen: "%[4]s"}
static_ranges: [%[5]s]
tenants:
  - id: %[6]s
    client_ca: %[7]s/acme-ca/ca.pem
    identities: {uri_san: ["%[8]s"]}
listeners:
  - {name: web, listen: ":%[11]s", protocol: https, server_cert: %[7]s/server.pem, server_key: %[7]s/server.key}
  - {name: services, listen: ":8443", protocol: soap, server_cert: %[7]s/server.pem, server_key: %[7]s/server.key}
  - {name: mainframe, listen: ":992", protocol: tn3270, server_cert: %[7]s/server.pem, server_key: %[7]s/server.key}
gateway:
  listen: "%[9]s:443"
  server_cert: %[7]s/tunnel.pem
  server_key: %[7]s/tunnel.key
  connectors:
    - {tenant: %[6]s, client_ca: %[7]s/acme-connector-ca/ca.pem, identities: {uri_san: ["%[10]s"]}}
  keepalive: {interval: 1s, timeout: 2s}
`, outsideIf, d.dir, d.bpffs, metricsAddr, feedV4, tenant, p, tenantURI, gwTunnelV4, connURI, gwWebPort)
	d.config = d.path("gateway.yaml")
	if err := os.WriteFile(d.config, []byte(gw), 0o600); err != nil {
		return err
	}

	conn := fmt.Sprintf(`# gatehouse demo connector (written by test/demo --connector)
state_dir: %[1]s/connector-state
admin_socket: %[1]s/connector.sock
shutdown_grace: 2s
enforcement: {xdp: "off", nftables: false}
metrics: {listen: "%[2]s"}
tenants:
  - id: %[3]s
    client_ca: %[4]s/acme-ca/ca.pem
    identities: {uri_san: ["%[5]s"]}
listeners:
  - name: web
    listen: "127.0.0.1:18443"
    protocol: https
    server_cert: %[4]s/server.pem
    server_key: %[4]s/server.key
    routes:
      - {tenant: %[3]s, backend: "https://%[6]s", backend_ca: %[4]s/internal-ca/ca.pem}
  - name: services
    listen: "127.0.0.1:18444"
    protocol: soap
    server_cert: %[4]s/server.pem
    server_key: %[4]s/server.key
    routes:
      - {tenant: %[3]s, backend: "http://%[7]s", soap_actions: ["urn:acme:GetOrder"]}
  - name: mainframe
    listen: "127.0.0.1:18992"
    protocol: tn3270
    server_cert: %[4]s/server.pem
    server_key: %[4]s/server.key
    routes:
      - {tenant: %[3]s, backend: "%[8]s"}
connector:
  tenant: %[3]s
  gateways: ["%[9]s:443"]
  gateway_ca: %[4]s/tunnel-ca/ca.pem
  cert: %[4]s/acme-connector.pem
  key: %[4]s/acme-connector.key
  tunnels: %[10]d
  # exactly the three internal services, whatever a route says
  allow: ["%[11]s"]
  keepalive: {interval: 1s, timeout: 2s}
`, d.dir, connMetrics, tenant, p, tenantURI, httpsAddr, soapAddr, tn3270Addr, gwTunnelV4, connTunnels,
		strings.Join(allowList(), `", "`))
	d.connConfig = d.path("connector.yaml")
	return os.WriteFile(d.connConfig, []byte(conn), 0o600)
}
