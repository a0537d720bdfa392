package test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
	"github.com/gatehouse-dmz/gatehouse/internal/testkit"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// The HA pair's addresses: the VIP and each node's own on the WAN side
// (a second address per node in the intruder's range, so that a reply to
// the intruder would find its way back), and the internal links.
const (
	haVIP      = "192.0.2.100"
	haClient   = "192.0.2.10"
	haIntruder = "198.51.100.66"
)

// haNode is one gatehouse appliance of the pair: its namespace, its WAN
// interface (the node's end of the veth to the bridge), the bridge's end
// of that veth (the switch port), its gatehouse and its keepalived.
type haNode struct {
	name           string
	ns             *netns.NS
	wan, port      string
	wanV4, intrV4  string
	backend        string // the backend's address on this node's internal link
	dir, config    string
	keepalivedConf string
	d              *daemonProc
	keepalived     *daemonProc
	metricsClient  *http.Client
	priority       int
	peerWAN        string
}

type haTopology struct {
	bridge, client, intruder, internal *netns.NS
	nodes                              [2]*haNode
	serverCA                           *certstest.CA
	tenant                             *certstest.Leaf
}

// newHATopology builds a client, an intruder and two gatehouse nodes on
// one bridge ("the WAN switch"), each node with its own link to the
// internal backend, starts gatehouse on both with the same policy, and
// keepalived on both (node a first, so that it holds the VIP).
func newHATopology(t *testing.T) *haTopology {
	t.Helper()
	netns.RequirePriv(t)
	keepalived := netns.RequireTool(t, "keepalived", "keepalived")
	ht := &haTopology{}
	ht.bridge = netns.New(t, "wan")
	ht.client = netns.New(t, "client")
	ht.intruder = netns.New(t, "intruder")
	ht.internal = netns.New(t, "internal")
	ht.bridge.Exec(t, "ip", "link", "add", "br0", "type", "bridge")
	ht.bridge.Exec(t, "ip", "link", "set", "br0", "up")
	attach := func(port string) {
		ht.bridge.Exec(t, "ip", "link", "set", port, "master", "br0")
	}
	attach(netns.Connect(t, ht.bridge, nil, ht.client, []string{haClient + "/24"}).A)
	iv := netns.Connect(t, ht.bridge, nil, ht.intruder, []string{haIntruder + "/24"})
	attach(iv.A)
	// The intruder reaches the VIP and the nodes across the switch, as a
	// host on the same segment would.
	ht.intruder.Exec(t, "ip", "route", "add", "192.0.2.0/24", "dev", iv.B)

	ht.serverCA = certstest.NewCA(t, "gatehouse")
	server := ht.serverCA.Server(t, "gate.example")
	tenantCA := certstest.NewCA(t, "acme")
	ht.tenant = tenantCA.Client(t, "acme-cloud", "spiffe://acme/cloud")

	// The backend answers with the address it was reached on, which
	// names the node the request came through.
	ln := ht.internal.Listen(t, "tcp", ":8080")
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "via %s", r.Context().Value(http.LocalAddrContextKey))
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	for i, n := range []struct{ name, wan, intr, self, backend, peer string }{
		{"a", "192.0.2.2", "198.51.100.2", "203.0.113.1", "203.0.113.2", "192.0.2.3"},
		{"b", "192.0.2.3", "198.51.100.3", "203.0.113.5", "203.0.113.6", "192.0.2.2"},
	} {
		node := &haNode{name: n.name, wanV4: n.wan, intrV4: n.intr, backend: n.backend, peerWAN: n.peer,
			dir: t.TempDir(), priority: 150 - 50*i}
		node.ns = netns.New(t, "node"+n.name)
		v := netns.Connect(t, ht.bridge, nil, node.ns, []string{n.wan + "/24", n.intr + "/24"})
		attach(v.A)
		node.port, node.wan = v.A, v.B
		netns.Connect(t, node.ns, []string{n.self + "/30"}, ht.internal, []string{n.backend + "/30"})
		node.metricsClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return node.ns.DialContext(ctx, network, "", addr)
			},
		}}
		pinDir := mountBPFFS(t, node.dir)
		node.config = filepath.Join(node.dir, "gatehouse.yaml")
		node.writeConfig(t, fmt.Sprintf(`
interface: %[1]s
state_dir: %[2]s/state
shutdown_grace: 1s
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
  - {id: acme, client_ca: %[4]s, identities: {uri_san: ["spiffe://acme/*"]}}
listeners:
  - name: web
    listen: ":443"
    protocol: https
    server_cert: %[5]s
    server_key: %[6]s
    routes:
      - {tenant: acme, backend: "http://%[7]s:8080"}
`, node.wan, node.dir, pinDir, tenantCA.CertFile, server.CertFile, server.KeyFile, n.backend))
		node.start(t)
		ht.nodes[i] = node
	}
	for _, node := range ht.nodes {
		node.keepalivedConf = filepath.Join(node.dir, "keepalived.conf")
		node.writeKeepalived(t)
	}
	ht.nodes[0].startKeepalived(t, keepalived)
	ht.waitMaster(t, ht.nodes[0], 20*time.Second)
	ht.nodes[1].startKeepalived(t, keepalived)
	return ht
}

func (n *haNode) writeConfig(t *testing.T, cfg string) {
	t.Helper()
	if err := os.WriteFile(n.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (n *haNode) start(t *testing.T) {
	t.Helper()
	n.d = launch(t, n.ns.Command(binary(t), "run", "-c", n.config), "127.0.0.1:9477", n.metricsClient)
}

// writeKeepalived writes the node's keepalived.conf: the example of
// deploy/keepalived with this node's interface, addresses and priority,
// and the test's binary and configuration in the track_script.
func (n *haNode) writeKeepalived(t *testing.T) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "deploy", "keepalived", "keepalived.conf"))
	if err != nil {
		t.Fatal(err)
	}
	r := strings.NewReplacer(
		"router_id gatehouse-a", "router_id gatehouse-"+n.name,
		"interface eth1", "interface "+n.wan,
		"dev eth1", "dev "+n.wan,
		"    eth1\n", "    "+n.wan+"\n",
		"priority 150", fmt.Sprintf("priority %d", n.priority),
		"192.0.2.100/24", haVIP+"/24",
		"unicast_src_ip 192.0.2.2", "unicast_src_ip "+n.wanV4,
		"        192.0.2.3\n", "        "+n.peerWAN+"\n",
		"/usr/local/bin/gatehouse status --ready", binary(t)+" status --ready",
		"-c /etc/gatehouse/gatehouse.yaml", "-c "+n.config,
		"notify \"/usr/bin/logger -t gatehouse-vrrp\"", "",
	)
	conf := r.Replace(string(raw))
	if strings.Contains(conf, "eth1") || strings.Contains(conf, "/etc/gatehouse") {
		t.Fatalf("keepalived.conf: example not fully adapted:\n%s", conf)
	}
	if err := os.WriteFile(n.keepalivedConf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
}

// startKeepalived runs keepalived (VRRP only, in the foreground, pid
// files in the node's directory) in the node's namespace.
func (n *haNode) startKeepalived(t *testing.T, keepalived string) {
	t.Helper()
	cmd := n.ns.Command(keepalived, "--dont-fork", "--log-console", "--log-detail", "--no-syslog", "--vrrp",
		"-f", n.keepalivedConf, "-p", filepath.Join(n.dir, "keepalived.pid"), "-r", filepath.Join(n.dir, "vrrp.pid"))
	n.keepalived = &daemonProc{cmd: cmd, exited: make(chan struct{})}
	n.keepalived.out = &testkit.LogBuffer{}
	cmd.Stdout, cmd.Stderr = n.keepalived.out, n.keepalived.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	k := n.keepalived
	go func() { k.exitErr = cmd.Wait(); close(k.exited) }()
	t.Cleanup(func() {
		// SIGTERM to the parent lets it take the VIP away and end its VRRP
		// child; the namespace's cleanup kills what is left.
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-k.exited:
		case <-time.After(5 * time.Second):
			k.kill()
		}
		if t.Failed() {
			t.Logf("keepalived on node %s:\n%s", n.name, k.out.String())
		}
	})
}

// holdsVIP reports whether the VIP is on the node's WAN interface.
func (n *haNode) holdsVIP(t *testing.T) bool {
	t.Helper()
	return strings.Contains(n.ns.Exec(t, "ip", "-4", "-o", "addr", "show"), " "+haVIP+"/")
}

func (ht *haTopology) waitMaster(t *testing.T, n *haNode, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !n.holdsVIP(t) {
		if time.Now().After(deadline) {
			out := ""
			if n.keepalived != nil {
				out = n.keepalived.out.String()
			}
			t.Fatalf("node %s does not hold the VIP after %s; keepalived:\n%s", n.name, within, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// get makes one tenant request to the VIP from the client namespace, on
// a new connection, and returns the node that served it.
func (ht *haTopology) get(ctx context.Context) (string, error) {
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: ht.serverCA.Pool(), ServerName: "gate.example",
			Certificates: []tls.Certificate{ht.tenant.TLS}},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return ht.client.DialContext(ctx, network, "", addr)
		},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, "GET", "https://"+haVIP+":443/orders", nil)
	if err != nil {
		return "", err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	for _, n := range ht.nodes {
		if strings.Contains(string(b), "via "+n.backend+":") {
			return n.name, nil
		}
	}
	return "", fmt.Errorf("answer from no known node: %q", b)
}
