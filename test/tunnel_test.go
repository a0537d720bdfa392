package test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
	"github.com/gatehouse-dmz/gatehouse/internal/testkit"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
	"github.com/gatehouse-dmz/gatehouse/test/tn3270host"
)

// tunnelTopo is a site that opens no inbound port: the "cloud" namespace
// with the tenants' clients, the "gw" namespace with the gateway (XDP and
// nftables on its cloud side, the tunnel port on the other), a "fw"
// namespace whose nftables forwards only what the inside opens to port
// 443 and what answers it, and the "internal" namespace with the
// connectors and the backends.
type tunnelTopo struct {
	cloud, gw, fw, internal *netns.NS
	dir                     string
	serverCA                *certstest.CA
	clients                 map[string]*certstest.Leaf // by tenant
	connLeaf                map[string]*certstest.Leaf // each tenant's connector certificate
	connCA                  map[string]*certstest.CA
	gwCA                    *certstest.CA
	internalCA              *certstest.CA
	crl                     string // acme's connector CRL, as the gateway reads it
	gateway                 *daemonProc
	configs                 map[string]string // "gateway", "acme", "globex": each daemon's configuration
	connectors              map[string]*daemonProc
	hits                    map[string]*atomic.Int64 // requests each backend address got
	tenantsSeen             sync.Map                 // backend address → tenants it saw ("acme,globex")
	// connectorGateways, when set, are the gateways of the connectors
	// started afterwards (default: the first gateway only).
	connectorGateways []string
}

const (
	tunCloud    = "192.0.2.10"
	tunGateway  = "192.0.2.1"
	tunGwInside = "198.51.100.1"
	tunGw2      = "198.51.100.3" // a second gateway's tunnel port (startGateway2)
	tunFwOut    = "198.51.100.2"
	tunFwIn     = "203.0.113.1"
	tunAcme     = "203.0.113.10" // acme's backend and connectors
	tunGlobex   = "203.0.113.11" // globex's backend
	tunOff      = "203.0.113.20" // a backend outside acme's allow-list
	tunProxy    = "203.0.113.30" // the site's HTTP proxy
)

func newTunnelTopo(t *testing.T) *tunnelTopo {
	t.Helper()
	netns.RequirePriv(t)
	netns.RequireTool(t, "nft", "nftables")
	netns.RequireTool(t, "curl", "curl")
	tt := &tunnelTopo{dir: t.TempDir(), clients: map[string]*certstest.Leaf{}, connLeaf: map[string]*certstest.Leaf{},
		connCA: map[string]*certstest.CA{}, configs: map[string]string{}, connectors: map[string]*daemonProc{}, hits: map[string]*atomic.Int64{}}
	tt.cloud = netns.New(t, "cloud")
	tt.gw = netns.New(t, "gw")
	tt.fw = netns.New(t, "fw")
	tt.internal = netns.New(t, "internal")
	outside := netns.Connect(t, tt.cloud, []string{tunCloud + "/24"}, tt.gw, []string{tunGateway + "/24"})
	netns.Connect(t, tt.gw, []string{tunGwInside + "/24", tunGw2 + "/24"}, tt.fw, []string{tunFwOut + "/24"})
	in := netns.Connect(t, tt.fw, []string{tunFwIn + "/24"}, tt.internal, []string{tunAcme + "/24", tunGlobex + "/24", tunOff + "/24", tunProxy + "/24"})
	tt.internal.AddRoute(t, "default", tunFwIn)
	tt.gw.AddRoute(t, "203.0.113.0/24", tunFwOut)
	tt.fw.Sysctl(t, "net.ipv4.ip_forward", "1")
	// The enterprise's firewall: nothing new comes in; the inside may open
	// connections to port 443, and their answers pass.
	ruleset := fmt.Sprintf(`table inet fw {
  chain forward {
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    iifname %q tcp dport 443 ct state new accept
  }
}
`, in.A)
	cmd := tt.fw.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(ruleset)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("firewall ruleset: %v\n%s", err, out)
	}

	// PKI: the tenants' clients, the listeners' server certificate, each
	// tenant's connectors, the tunnel port's CA, the internal CA.
	tt.serverCA = certstest.NewCA(t, "gatehouse")
	tt.gwCA = certstest.NewCA(t, "gateway tunnels")
	tt.internalCA = certstest.NewCA(t, "internal")
	// initech is a tenant of the listeners without any connector.
	for _, tenant := range []string{"acme", "globex", "initech"} {
		ca := certstest.NewCA(t, tenant)
		tt.clients[tenant] = ca.Client(t, tenant+"-cloud", "spiffe://"+tenant+"/cloud")
		tt.connCA[tenant] = certstest.NewCA(t, tenant+" connectors")
		tt.connLeaf[tenant] = tt.connCA[tenant].Client(t, tenant+"-connector", "spiffe://"+tenant+"/connector")
		tt.writeFile(t, tenant+"-ca.pem", ca.CertFile)
		if tenant == "acme" {
			// A client the gateway admits and acme's connector revokes:
			// only the connector's tenants carry this CRL.
			tt.clients["acme-revoked"] = ca.Client(t, "acme-revoked", "spiffe://acme/revoked")
			ca.CRL(t, filepath.Join(tt.dir, "acme-clients.crl"), time.Now().Add(24*time.Hour), tt.clients["acme-revoked"])
		}
	}
	tt.crl = tt.connCA["acme"].CRL(t, filepath.Join(tt.dir, "acme-connectors.crl"), time.Now().Add(24*time.Hour))

	// Backends inside: each says whose request it served and for whom.
	for _, addr := range []string{tunAcme, tunGlobex, tunOff} {
		tt.hits[addr] = &atomic.Int64{}
		cert := tt.internalCA.Server(t, addr)
		ln := tt.internal.Listen(t, "tcp", addr+":8443")
		srv := &http.Server{
			Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				tt.hits[addr].Add(1)
				tenant := r.Header.Get("X-Gatehouse-Tenant")
				prev, _ := tt.tenantsSeen.LoadOrStore(addr, tenant)
				if !strings.Contains(prev.(string), tenant) {
					tt.tenantsSeen.Store(addr, prev.(string)+","+tenant)
				}
				fmt.Fprintf(w, "backend %s: tenant %s, client %s", addr, tenant, r.Header.Get("X-Forwarded-For"))
			}),
			TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert.TLS}},
			ReadHeaderTimeout: 5 * time.Second,
		}
		go srv.ServeTLS(ln, "", "")
		t.Cleanup(func() { srv.Close() })
	}
	// acme's mainframe, inside.
	tnLn := tt.internal.Listen(t, "tcp", tunAcme+":23")
	go tn3270host.Serve(tnLn, io.Discard)
	// The cloud's clients find the gateway by the name in its certificate,
	// as s3270 checks it: `ip netns exec` shows /etc/netns/NS/hosts as
	// /etc/hosts inside NS.
	if _, err := os.Stat("/etc/netns"); os.IsNotExist(err) {
		t.Cleanup(func() { os.Remove("/etc/netns") }) // only if empty: others may have used it since
	}
	etc := filepath.Join("/etc/netns", tt.cloud.Name)
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(etc) })
	if err := os.WriteFile(filepath.Join(etc, "hosts"), []byte("127.0.0.1 localhost\n"+tunGateway+" gate.example\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tt.startGateway(t, outside.B)
	for _, tenant := range []string{"acme", "globex"} {
		tt.connectors[tenant] = tt.startConnector(t, tenant, tenant, tt.connLeaf[tenant], 4, "")
	}
	tt.waitTunnels(t, "acme", 4)
	tt.waitTunnels(t, "globex", 4)
	return tt
}

// writeFile copies src into the topology's directory as name.
func (tt *tunnelTopo) writeFile(t *testing.T, name, src string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(tt.dir, name)
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return dst
}

func (tt *tunnelTopo) startGateway(t *testing.T, outside string) {
	t.Helper()
	pin := mountBPFFS(t, tt.dir)
	server := tt.serverCA.Server(t, "gate.example")
	tunnelCert := tt.gwCA.Server(t, "gw.example", tunGwInside)
	state := filepath.Join(tt.dir, "gw")
	cfg := fmt.Sprintf(`
interface: %[1]s
state_dir: %[2]s
shutdown_grace: 2s
admin_socket: %[2]s/admin.sock
enforcement:
  xdp: auto
  pin_dir: %[3]s/gatehouse
  nftables: true
  mode: listeners
  scan_block: {distinct_ports: 0}
metrics: {listen: "127.0.0.1:9477"}
static_ranges: [192.0.2.0/25]
tenants:
  - {id: acme, client_ca: %[4]s/acme-ca.pem}
  - {id: globex, client_ca: %[4]s/globex-ca.pem}
  - {id: initech, client_ca: %[4]s/initech-ca.pem}
listeners:
  - {name: web, listen: ":8443", protocol: https, server_cert: %[5]s, server_key: %[6]s}
  - {name: services, listen: ":8444", protocol: soap, server_cert: %[5]s, server_key: %[6]s}
  - {name: mainframe, listen: ":9923", protocol: tn3270, server_cert: %[5]s, server_key: %[6]s}
gateway:
  listen: "%[7]s:443"
  server_cert: %[8]s
  server_key: %[9]s
  connectors:
    - {tenant: acme, client_ca: %[10]s, crl: %[11]s}
    - {tenant: globex, client_ca: %[12]s}
  keepalive: {interval: 1s, timeout: 1s}
`, outside, state, pin, tt.dir, server.CertFile, server.KeyFile, tunGwInside, tunnelCert.CertFile, tunnelCert.KeyFile,
		tt.connCA["acme"].CertFile, tt.crl, tt.connCA["globex"].CertFile)
	path := filepath.Join(tt.dir, "gateway.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	tt.configs["gateway"] = path
	tt.gateway = launch(t, tt.gw.Command(binary(t), "run", "-c", path), "127.0.0.1:9477", nsClient(tt.gw))
}

var connectorPort atomic.Int32

// startConnector runs a connector of tenant in the internal namespace,
// presenting leaf; it serves acme's routes (one outside its allow-list)
// or globex's.
func (tt *tunnelTopo) startConnector(t *testing.T, name, tenant string, leaf *certstest.Leaf, tunnels int, extra string) *daemonProc {
	t.Helper()
	path, metrics := tt.connectorConfig(t, name, tenant, leaf, tunnels, extra)
	return launch(t, tt.internal.Command(binary(t), "run", "-c", path), metrics, nsClient(tt.internal))
}

// runConnector starts a connector without waiting for it to be ready.
func (tt *tunnelTopo) runConnector(t *testing.T, name, tenant string, leaf *certstest.Leaf, tunnels int, extra string) (*exec.Cmd, *testkit.LogBuffer) {
	t.Helper()
	path, _ := tt.connectorConfig(t, name, tenant, leaf, tunnels, extra)
	cmd := tt.internal.Command(binary(t), "run", "-c", path)
	out := &testkit.LogBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd, out
}

// connectorConfig writes a connector's configuration and returns its path
// and metrics address.
func (tt *tunnelTopo) connectorConfig(t *testing.T, name, tenant string, leaf *certstest.Leaf, tunnels int, extra string) (string, string) {
	t.Helper()
	n := connectorPort.Add(1)
	metrics := fmt.Sprintf("127.0.0.1:%d", 9480+n)
	state := filepath.Join(tt.dir, fmt.Sprintf("connector-%s-%d", name, n))
	local := tt.serverCA.Server(t, "connector.local")
	routes := fmt.Sprintf(`      - {tenant: %s, path: /, backend: "https://%s:8443", backend_ca: %s}`, tenant, map[string]string{"acme": tunAcme, "globex": tunGlobex}[tenant], tt.internalCA.CertFile)
	allow := map[string]string{"acme": tunAcme, "globex": tunGlobex}[tenant] + "/32:8443"
	listeners, crl := "", ""
	if tenant == "acme" {
		crl = ", crl: " + filepath.Join(tt.dir, "acme-clients.crl")
		// A route the allow-list does not cover: refused at its dial.
		routes += fmt.Sprintf("\n      - {tenant: acme, path: /off, backend: \"https://%s:8443\", backend_ca: %s}", tunOff, tt.internalCA.CertFile)
		// The mainframe, as the gateway's tn3270 listener names it.
		listeners = fmt.Sprintf(`  - name: mainframe
    listen: "127.0.0.1:%d"
    protocol: tn3270
    server_cert: %s
    server_key: %s
    routes: [{tenant: acme, backend: "%s:23"}]
  - name: services
    listen: "127.0.0.1:%d"
    protocol: soap
    server_cert: %s
    server_key: %s
    routes: [{tenant: acme, backend: "https://%s:8443", backend_ca: %s, soap_actions: ["urn:acme:GetOrder"]}]
`, 19400+n, local.CertFile, local.KeyFile, tunAcme, 19500+n, local.CertFile, local.KeyFile, tunAcme, tt.internalCA.CertFile)
		allow += `", "` + tunAcme + "/32:23"
	}
	cfg := fmt.Sprintf(`
state_dir: %[1]s
shutdown_grace: 2s
admin_socket: %[1]s/admin.sock
enforcement: {xdp: "off", nftables: false}
metrics: {listen: "%[2]s"}
tenants:
  - {id: %[3]s, client_ca: %[4]s/%[3]s-ca.pem%[17]s}
listeners:
  - name: web
    listen: "127.0.0.1:%[5]d"
    protocol: https
    server_cert: %[6]s
    server_key: %[7]s
    routes:
%[8]s
%[16]s
connector:
  tenant: %[3]s
  gateways: %[9]s
  gateway_ca: %[10]s
  cert: %[11]s
  key: %[12]s
  tunnels: %[13]d
  allow: ["%[14]s"]
  keepalive: {interval: 1s, timeout: 1s}
%[15]s
`, state, metrics, tenant, tt.dir, 18400+n, local.CertFile, local.KeyFile, routes, tt.gatewaysYAML(), tt.gwCA.CertFile,
		leaf.CertFile, leaf.KeyFile, tunnels, allow, extra, listeners, crl)
	path := filepath.Join(tt.dir, fmt.Sprintf("connector-%s-%d.yaml", name, n))
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	tt.configs[name] = path
	return path, metrics
}

// gatewaysYAML is the connector.gateways list of the next connector.
func (tt *tunnelTopo) gatewaysYAML() string {
	gws := tt.connectorGateways
	if len(gws) == 0 {
		gws = []string{tunGwInside + ":443"}
	}
	return `["` + strings.Join(gws, `", "`) + `"]`
}

// startTinyproxy runs the site's HTTP proxy in the internal namespace:
// CONNECT to port 443 only, with basic authentication.
func (tt *tunnelTopo) startTinyproxy(t *testing.T) *testkit.LogBuffer {
	t.Helper()
	bin := netns.RequireTool(t, "tinyproxy", "tinyproxy")
	conf := filepath.Join(tt.dir, "tinyproxy.conf")
	body := fmt.Sprintf("Port 8888\nListen %s\nTimeout 600\nMaxClients 20\nBasicAuth tunnel s3cret\nConnectPort 443\nAllow 203.0.113.0/24\nLogLevel Connect\n", tunProxy)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := tt.internal.Command(bin, "-d", "-c", conf)
	out := &testkit.LogBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := tt.internal.DialContext(context.Background(), "tcp", "", tunProxy+":8888")
		if err == nil {
			c.Close()
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("tinyproxy does not listen: %v\n%s", err, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// terminal opens a TLS connection to a terminal listener of the gateway as
// tenant's client and returns what it reads until the gateway closes.
func (tt *tunnelTopo) terminal(t *testing.T, tenant, port string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := tt.cloud.DialContext(ctx, "tcp", "", net.JoinHostPort(tunGateway, port))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	tc := tls.Client(nc, &tls.Config{RootCAs: tt.serverCA.Pool(), ServerName: "gate.example", Certificates: []tls.Certificate{tt.clients[tenant].TLS}})
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	b, _ := io.ReadAll(tc)
	return string(b)
}

// nsClient reaches a daemon's metrics endpoint inside n.
func nsClient(n *netns.NS) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return n.DialContext(ctx, network, "", addr)
		},
	}}
}

// gatewayMetric reads one series of the gateway's metrics (-1: absent).
func (tt *tunnelTopo) gatewayMetric(t *testing.T, series string) float64 {
	t.Helper()
	return metricOf(t, tt.gateway, series)
}

func metricOf(t *testing.T, d *daemonProc, series string) float64 {
	t.Helper()
	_, body := d.get(t, "/metrics")
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return -1
}

func (tt *tunnelTopo) waitTunnels(t *testing.T, tenant string, n int) {
	t.Helper()
	series := fmt.Sprintf(`gatehouse_tunnels_up{peer=%q,role="gateway"}`, tenant)
	tt.gateway.waitFor(t, fmt.Sprintf("%d tunnels of %s", n, tenant), func() bool { return tt.gatewayMetric(t, series) == float64(n) })
}

// curl asks the gateway's listener for path as tenant's client, with the
// real curl, and returns the status and body.
func (tt *tunnelTopo) curl(t *testing.T, tenant, path string) (int, string) {
	t.Helper()
	return tt.curlAt(t, tenant, "8443", path)
}

// curlAt is curl on the gateway listener at port (9443: startGateway2's).
func (tt *tunnelTopo) curlAt(t *testing.T, tenant, port, path string) (int, string) {
	t.Helper()
	c := tt.clients[tenant]
	out, err := tt.cloud.Command("curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}",
		"--cacert", tt.serverCA.CertFile, "--cert", c.CertFile, "--key", c.KeyFile,
		"--resolve", "gate.example:"+port+":"+tunGateway, "https://gate.example:"+port+path).CombinedOutput()
	s := strings.TrimSpace(string(out))
	i := strings.LastIndexByte(s, '\n')
	code, _ := strconv.Atoi(s[i+1:])
	if err != nil && code == 0 {
		return 0, s
	}
	return code, s[:max(i, 0)]
}
