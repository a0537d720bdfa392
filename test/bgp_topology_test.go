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
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
	"github.com/gatehouse-dmz/gatehouse/internal/testkit"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// The ECMP topology: a router (BIRD) with the nodes on one segment and a
// client on another; the service address sits on every node's loopback and
// reaches the router only by BGP.
const (
	bgpVIP       = "203.0.113.100"
	bgpRouter    = "198.51.100.1"
	bgpRouterAS  = 64512
	bgpNodeAS    = 64513
	bgpClient    = "192.0.2.10"
	bgpClientGW  = "192.0.2.1"
	bgpCommunity = "64512:100"
	// IPv6 (bgpOpts.v6): the router's network and the service address.
	bgpRouter6 = "2001:db8:100::1"
	bgpVIP6    = "2001:db8:ff::100"
)

// bgpOpts varies the topology: an MD5 password on BIRD's side of every
// session, and an IPv6 session beside the IPv4 one.
type bgpOpts struct {
	password string
	v6       bool
}

type bgpNode struct {
	name, addr  string
	addr6       string // with bgpOpts.v6
	password    string // the node's side of the MD5 key
	ns          *netns.NS
	dir, config string
	d           *daemonProc
	metrics     *http.Client
}

type bgpTopology struct {
	router, client *netns.NS
	birdc, sock    string
	bird           *daemonProc
	nodes          []*bgpNode
	opts           bgpOpts
	serverCA       *certstest.CA
	tenant         *certstest.Leaf
	tenantCA       *certstest.CA
	server         *certstest.Leaf
}

// newBGPTopology starts BIRD in the router namespace (ECMP: merge paths
// into the kernel table) and prepares n nodes; start starts one.
func newBGPTopology(t *testing.T, n int) *bgpTopology {
	t.Helper()
	return newBGPTopologyWith(t, n, bgpOpts{})
}

func newBGPTopologyWith(t *testing.T, n int, opts bgpOpts) *bgpTopology {
	t.Helper()
	netns.RequirePriv(t)
	bird := netns.RequireTool(t, "bird", "bird2")
	bt := &bgpTopology{birdc: netns.RequireTool(t, "birdc", "bird2"), opts: opts}
	bt.router = netns.New(t, "router")
	bt.client = netns.New(t, "client")
	bt.router.Sysctl(t, "net.ipv4.ip_forward", "1")
	// Spread flows by ports too, so one client's connections use every node.
	bt.router.Sysctl(t, "net.ipv4.fib_multipath_hash_policy", "1")
	bt.router.Exec(t, "ip", "link", "add", "br0", "type", "bridge")
	bt.router.Exec(t, "ip", "addr", "add", bgpRouter+"/24", "dev", "br0")
	if opts.v6 {
		bt.router.Sysctl(t, "net.ipv6.conf.all.forwarding", "1")
		bt.router.Exec(t, "ip", "addr", "add", bgpRouter6+"/64", "dev", "br0", "nodad")
	}
	bt.router.Exec(t, "ip", "link", "set", "br0", "up")
	cv := netns.Connect(t, bt.router, []string{bgpClientGW + "/24"}, bt.client, []string{bgpClient + "/24"})
	bt.client.Exec(t, "ip", "route", "add", "default", "via", bgpClientGW, "dev", cv.B)

	bt.serverCA = certstest.NewCA(t, "gatehouse")
	bt.server = bt.serverCA.Server(t, "gate.example")
	bt.tenantCA = certstest.NewCA(t, "acme")
	bt.tenant = bt.tenantCA.Client(t, "acme-cloud", "spiffe://acme/cloud")

	dir := t.TempDir()
	var protos strings.Builder
	for i := range n {
		node := &bgpNode{name: fmt.Sprintf("n%d", i+1), addr: fmt.Sprintf("198.51.100.%d", i+2), dir: t.TempDir(), password: opts.password}
		node.ns = netns.New(t, "node"+node.name)
		addrs := []string{node.addr + "/24"}
		if opts.v6 {
			node.addr6 = fmt.Sprintf("2001:db8:100::%d", i+2)
			addrs = append(addrs, node.addr6+"/64")
		}
		v := netns.Connect(t, bt.router, nil, node.ns, addrs)
		bt.router.Exec(t, "ip", "link", "set", v.A, "master", "br0")
		node.ns.Exec(t, "ip", "route", "add", "default", "via", bgpRouter, "dev", v.B)
		node.ns.Exec(t, "ip", "addr", "add", bgpVIP+"/32", "dev", "lo")
		if opts.v6 {
			node.ns.Exec(t, "ip", "-6", "route", "add", "default", "via", bgpRouter6, "dev", v.B)
			node.ns.Exec(t, "ip", "addr", "add", bgpVIP6+"/128", "dev", "lo")
		}
		node.metrics = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return node.ns.DialContext(ctx, network, "", addr)
			},
		}}
		// The backend answers with the node's name.
		ln := node.ns.Listen(t, "tcp", "127.0.0.1:8080")
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprint(w, "via "+node.name)
		}), ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		// The terminal backend names the node, then echoes.
		go serveEcho(node.ns.Listen(t, "tcp", "127.0.0.1:7001"), node.name)
		node.config = filepath.Join(node.dir, "gatehouse.yaml")
		node.writeConfig(t, bt.nodeConfig(node, ""))
		bt.nodes = append(bt.nodes, node)
		password := ""
		if opts.password != "" {
			password = fmt.Sprintf("password %q;", opts.password)
		}
		fmt.Fprintf(&protos, `
protocol bgp %[1]s {
  local %[2]s as %[3]d;
  neighbor %[4]s as %[5]d;
  passive on;
  %[6]s
  ipv4 { import all; export none; };
}
`, node.name, bgpRouter, bgpRouterAS, node.addr, bgpNodeAS, password)
		if opts.v6 {
			fmt.Fprintf(&protos, `
protocol bgp %[1]sv6 {
  local %[2]s as %[3]d;
  neighbor %[4]s as %[5]d;
  passive on;
  %[6]s
  ipv6 { import all; export none; };
}
`, node.name, bgpRouter6, bgpRouterAS, node.addr6, bgpNodeAS, password)
		}
	}
	if opts.v6 {
		protos.WriteString(`
protocol kernel {
  ipv6 { import none; export all; };
  merge paths on;
}
`)
	}
	conf := filepath.Join(dir, "bird.conf")
	bt.sock = filepath.Join(dir, "bird.ctl")
	if err := os.WriteFile(conf, fmt.Appendf(nil, `
log stderr all;
router id %s;
protocol device { scan time 10; }
protocol kernel {
  ipv4 { import none; export all; };
  merge paths on;
}
%s`, bgpRouter, protos.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := bt.router.Command(bird, "-f", "-c", conf, "-s", bt.sock, "-P", filepath.Join(dir, "bird.pid"))
	bt.bird = &daemonProc{cmd: cmd, exited: make(chan struct{}), out: &testkit.LogBuffer{}}
	cmd.Stdout, cmd.Stderr = bt.bird.out, bt.bird.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	b := bt.bird
	go func() { b.exitErr = cmd.Wait(); close(b.exited) }()
	t.Cleanup(func() {
		b.kill() // by its PID
		if t.Failed() {
			t.Logf("bird:\n%s", b.out.String())
		}
	})
	bt.waitRoute(t, "bird up", 15*time.Second, func(string, error) bool {
		_, err := bt.birdcCmd("show", "status")
		return err == nil
	})
	return bt
}

func (bt *bgpTopology) nodeConfig(n *bgpNode, extra string) string {
	neighbors := fmt.Sprintf("{address: %s, as: %d, password: %q}", bgpRouter, bgpRouterAS, n.password)
	announce := bgpVIP + "/32"
	if bt.opts.v6 {
		neighbors += fmt.Sprintf(", {address: %q, as: %d, password: %q}", bgpRouter6, bgpRouterAS, n.password)
		announce += ", \"" + bgpVIP6 + "/128\""
	}
	return fmt.Sprintf(`
state_dir: %[1]s/state
shutdown_grace: 1s
admin_socket: %[1]s/admin.sock
enforcement: {xdp: "off", nftables: false}
metrics: {listen: "127.0.0.1:9477"}
static_ranges: [192.0.2.0/24]
%[8]s
tenants:
  - {id: acme, client_ca: %[2]s, identities: {uri_san: ["spiffe://acme/*"]}}
listeners:
  - name: web
    listen: ":443"
    protocol: https
    server_cert: %[3]s
    server_key: %[4]s
    routes:
      - {tenant: acme, backend: "http://127.0.0.1:8080"}
  - {name: term, listen: ":7000", protocol: tcp, server_cert: %[3]s, server_key: %[4]s,
     routes: [{tenant: acme, backend: "127.0.0.1:7001"}]}
bgp:
  local_as: %[5]d
  router_id: %[6]s
  neighbors: [%[7]s]
  announce: [%[9]s]
  communities: ["%[10]s"]
  drain: {withdraw_wait: 3s}
`, n.dir, bt.tenantCA.CertFile, bt.server.CertFile, bt.server.KeyFile, bgpNodeAS, n.addr, neighbors, extra,
		announce, bgpCommunity)
}

func (n *bgpNode) writeConfig(t *testing.T, cfg string) {
	t.Helper()
	if err := os.WriteFile(n.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
}

// start runs gatehouse on the node; ready says whether to wait for
// /readyz (a node started not ready is waited for until it answers).
func (n *bgpNode) start(t *testing.T, ready bool) {
	t.Helper()
	cmd := n.ns.Command(binary(t), "run", "-c", n.config)
	if ready {
		n.d = launch(t, cmd, "127.0.0.1:9477", n.metrics)
		return
	}
	d := &daemonProc{cmd: cmd, out: &testkit.LogBuffer{}, metrics: "127.0.0.1:9477", exited: make(chan struct{}), http: n.metrics}
	cmd.Stdout, cmd.Stderr = d.out, d.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.exitErr = cmd.Wait(); close(d.exited) }()
	t.Cleanup(func() { d.kill() })
	d.waitFor(t, "an answer on /readyz", func() bool { code, _ := d.get(t, "/readyz"); return code != 0 })
	n.d = d
}

func (bt *bgpTopology) birdcCmd(args ...string) (string, error) {
	out, err := bt.router.Command(bt.birdc, append([]string{"-s", bt.sock}, args...)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("birdc %v: %v: %s", args, err, out)
	}
	return string(out), nil
}

var viaRE = regexp.MustCompile(`via (198\.51\.100\.\d+)`)

// nextHops lists the next hops BIRD has for the service prefix, and those
// of the router's kernel route (ECMP), sorted.
func (bt *bgpTopology) nextHops(t *testing.T) (bird, kernel []string) {
	t.Helper()
	out, err := bt.birdcCmd("show", "route", "for", bgpVIP+"/32", "all")
	if err != nil && !strings.Contains(err.Error(), "Network not found") {
		t.Fatal(err)
	}
	for _, m := range viaRE.FindAllStringSubmatch(out, -1) {
		bird = append(bird, m[1])
	}
	for _, m := range viaRE.FindAllStringSubmatch(bt.router.Exec(t, "ip", "-4", "route", "show", bgpVIP+"/32"), -1) {
		kernel = append(kernel, m[1])
	}
	slices.Sort(bird)
	slices.Sort(kernel)
	return slices.Compact(bird), slices.Compact(kernel)
}

// waitHops waits until BIRD and the router's kernel route both have exactly
// the nodes given as next hops, and returns when that was first seen.
func (bt *bgpTopology) waitHops(t *testing.T, what string, within time.Duration, nodes ...*bgpNode) time.Time {
	t.Helper()
	var want []string
	for _, n := range nodes {
		want = append(want, n.addr)
	}
	slices.Sort(want)
	var bird, kernel []string
	deadline := time.Now().Add(within)
	for {
		bird, kernel = bt.nextHops(t)
		if slices.Equal(bird, want) && slices.Equal(kernel, want) {
			return time.Now()
		}
		if time.Now().After(deadline) {
			out, _ := bt.birdcCmd("show", "protocols", "all")
			t.Fatalf("%s: next hops for %s after %s: bird %v, kernel %v; want %v\n%s", what, bgpVIP, within, bird, kernel, want, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (bt *bgpTopology) waitRoute(t *testing.T, what string, within time.Duration, ok func(string, error) bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !ok("", nil) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; bird:\n%s", what, bt.bird.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// get makes one tenant request from the client to addr (the VIP or a
// node's own address), on a new connection, and returns the node's name.
func (bt *bgpTopology) get(ctx context.Context, addr string) (string, error) {
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: bt.serverCA.Pool(), ServerName: "gate.example",
			Certificates: []tls.Certificate{bt.tenant.TLS}},
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			return bt.client.DialContext(ctx, network, "", a)
		},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, "GET", "https://"+addr+":443/", nil)
	if err != nil {
		return "", err
	}
	resp, err := (&http.Client{Transport: tr, Timeout: 3 * time.Second}).Do(req)
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
	return strings.TrimPrefix(string(b), "via "), nil
}

func (n *bgpNode) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := n.d.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}
