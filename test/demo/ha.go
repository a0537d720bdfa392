package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"
)

// The --ha fleet (documentation addresses only):
//
//	cloud    192.0.2.10  ──┐                        ┌── n1 198.51.100.2 ┐
//	                       ├─ br0 router (BIRD) br1 ─┼── n2 198.51.100.3 ├ gatehouse run, XDP + nft on "outside",
//	intruder 192.0.2.200 ──┘  192.0.2.1  198.51.100.1 └── n3 198.51.100.4 ┘ 203.0.113.100 on lo, announced over BGP
//
// Every node runs the same configuration but for its address, with its own
// backend on 127.0.0.1 that names the node. The router learns the service
// address 203.0.113.100/32 from each ready node over BGP and installs one
// ECMP route over them (BIRD's merge paths, layer-4 hash).
const (
	haVIP      = "203.0.113.100"
	haRouterW  = "192.0.2.1"    // the router on the cloud's wire
	haRouterN  = "198.51.100.1" // the router on the nodes' network
	haRouterAS = 64512
	haNodeAS   = 64513
	haMetrics  = "127.0.0.1:9477" // each node's metrics endpoint, inside its namespace
)

var haRoles = []string{"router", "cloud", "intruder", "n1", "n2", "n3"}

// haNode is one gatehouse node of the fleet.
type haNode struct {
	name, addr, config, log string
	cmd                     *exec.Cmd
	exited                  chan struct{}
}

// setupHA builds the fleet, starts BIRD, a backend and gatehouse on each
// node, and waits until the router's route to the service address has all
// three nodes.
func (d *demo) setupHA(ctx context.Context, bin string) error {
	fmt.Fprintln(d.out, "gatehouse demo (--ha): setting up three active nodes behind a BGP ECMP router")
	if err := d.prepareWorkDir(ctx, bin); err != nil {
		return err
	}

	if err := d.buildHATopology(ctx); err != nil {
		return fmt.Errorf("topology: %w", err)
	}
	d.ok("namespaces %s-{%s}: cloud %s and intruder %s behind the router, nodes 198.51.100.2-4, service address %s on each node's loopback",
		"ghdemo-"+d.id, strings.Join(haRoles, ","), cloudV4, intruderV4, haVIP)

	if err := d.makeHAPKI(ctx); err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	d.ok("gatehouse certs: one server certificate %s (%s) for every node, tenant %s client certificate, internal CA", gateName, haVIP, tenant)
	pub, err := d.signFeed(ctx)
	if err != nil {
		return fmt.Errorf("feed: %w", err)
	}
	d.ok("gatehouse feed: signed release of %q (%s): the only admitted range, the same on every node", feedName, feedV4)
	if err := d.mountBPFFS(ctx); err != nil {
		return err
	}
	if err := d.startBIRD(ctx); err != nil {
		return fmt.Errorf("router: %w", err)
	}
	d.ok("router: BIRD 2 in %s, AS %d, passive BGP sessions to the nodes, ECMP into its kernel table", d.ns["router"], haRouterAS)

	// The three nodes start at once, each awaiting its own readiness.
	for i, name := range []string{"n1", "n2", "n3"} {
		n := &haNode{name: name, addr: fmt.Sprintf("198.51.100.%d", i+2)}
		n.config, n.log = d.path(name+"/gatehouse.yaml"), d.path(name+"/gatehouse.log")
		d.haNodes = append(d.haNodes, n)
	}
	errs := make([]error, len(d.haNodes))
	var wg sync.WaitGroup
	for i, n := range d.haNodes {
		wg.Go(func() { errs[i] = d.startHANode(ctx, n, pub) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			d.log = d.haNodes[i].log
			return err
		}
	}
	d.ok("gatehouse check and run on n1, n2, n3: ready, each serving the tenant on its own address (same configuration, own router_id; logs %s/n*/gatehouse.log)", d.dir)

	// Each node serves the tenant on its own address before the fleet is
	// shown (the first connection through a fresh path may wait for
	// neighbour discovery on a loaded machine).
	for _, n := range d.haNodes {
		var node string
		var err error
		if !waitUntil(ctx, 20*time.Second, func() bool {
			node, err = d.haGet(ctx, "--resolve", gateName+":443:"+n.addr)
			return err == nil && node == n.name
		}) {
			return fmt.Errorf("%s does not serve the tenant on %s: %q %v", n.name, n.addr, node, err)
		}
	}
	var hops []string
	if !waitUntil(ctx, 30*time.Second, func() bool { hops = d.haHops(ctx); return len(hops) == 3 }) {
		return fmt.Errorf("the router's route to %s has next hops %v after 30s, want the three nodes", haVIP, hops)
	}
	d.ok("each node announced %s/32 once ready; the router installed one ECMP route over %s", haVIP, strings.Join(hops, ", "))
	return nil
}

func (d *demo) buildHATopology(ctx context.Context) error {
	if err := d.addNamespaces(ctx, haRoles); err != nil {
		return err
	}
	for _, br := range []string{"br0", "br1"} {
		if _, err := d.cmd(ctx, "router", "ip", "link", "add", br, "type", "bridge"); err != nil {
			return err
		}
	}
	links := []link{{"cloud", "eth0", "router", "cloud"}, {"intruder", "eth0", "router", "intruder"}}
	addrs := map[string][]string{"cloud/eth0": {cloudV4 + "/24"}, "intruder/eth0": {intruderV4 + "/24"}}
	for i, n := range []string{"n1", "n2", "n3"} {
		links = append(links, link{n, outsideIf, "router", n})
		addrs[n+"/"+outsideIf] = []string{fmt.Sprintf("198.51.100.%d/24", i+2)}
	}
	if err := d.addLinks(ctx, links, addrs); err != nil {
		return err
	}
	steps := [][]string{
		{"router", "ip", "addr", "add", haRouterW + "/24", "dev", "br0"},
		{"router", "ip", "addr", "add", haRouterN + "/24", "dev", "br1"},
		{"router", "ip", "link", "set", "cloud", "master", "br0"},
		{"router", "ip", "link", "set", "intruder", "master", "br0"},
		{"router", "ip", "link", "set", "br0", "up"},
		{"router", "ip", "link", "set", "br1", "up"},
		{"router", "sysctl", "-qw", "net.ipv4.ip_forward=1"},
		// Hash on ports too, so one client's connections spread over the nodes.
		{"router", "sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1"},
		{"cloud", "ip", "route", "add", "default", "via", haRouterW},
		{"intruder", "ip", "route", "add", "default", "via", haRouterW},
	}
	for _, n := range []string{"n1", "n2", "n3"} {
		steps = append(steps,
			[]string{"router", "ip", "link", "set", n, "master", "br1"},
			[]string{n, "ip", "route", "add", "default", "via", haRouterN},
			[]string{n, "ip", "addr", "add", haVIP + "/32", "dev", "lo"})
	}
	for _, s := range steps {
		if _, err := d.cmd(ctx, s[0], s[1], s[2:]...); err != nil {
			return err
		}
	}
	hosts := fmt.Sprintf("127.0.0.1 localhost\n::1 localhost\n%s %s\n", haVIP, gateName)
	return d.writeHosts([]string{"cloud", "intruder"}, hosts)
}

func (d *demo) makeHAPKI(ctx context.Context) error {
	p := d.path("pki")
	for _, args := range [][]string{
		{"certs", "init-ca", "--dir", p + "/gatehouse-ca", "--cn", "gatehouse demo CA"},
		{"certs", "issue", "--ca", p + "/gatehouse-ca", "--server", "--dns", gateName, "--ip", haVIP, "--out", p + "/server"},
		{"certs", "init-ca", "--dir", p + "/acme-ca", "--cn", "acme tenant CA"},
		{"certs", "issue", "--ca", p + "/acme-ca", "--client", "--tenant", tenant, "--uri", tenantURI, "--out", p + "/acme-cloud"},
		{"certs", "init-ca", "--dir", p + "/internal-ca", "--cn", "internal demo CA"},
		{"certs", "issue", "--ca", p + "/internal-ca", "--server", "--dns", "orders.internal.example", "--ip", "127.0.0.1", "--out", p + "/backend"},
	} {
		if _, err := d.cmd(ctx, "", d.bin, args...); err != nil {
			return err
		}
	}
	return nil
}

// startBIRD runs BIRD in the router namespace with one passive session per
// node and waits until it answers on its control socket.
func (d *demo) startBIRD(ctx context.Context) error {
	bird, err := exec.LookPath("bird")
	if err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "log stderr all;\nrouter id %s;\nprotocol device { scan time 10; }\n"+
		"protocol kernel {\n  ipv4 { import none; export all; };\n  merge paths on;\n}\n", haRouterN)
	for i, n := range []string{"n1", "n2", "n3"} {
		fmt.Fprintf(&b, "protocol bgp %s {\n  local %s as %d;\n  neighbor 198.51.100.%d as %d;\n  passive on;\n  ipv4 { import all; export none; };\n}\n",
			n, haRouterN, haRouterAS, i+2, haNodeAS)
	}
	conf := d.path("bird.conf")
	if err := os.WriteFile(conf, []byte(b.String()), 0o600); err != nil {
		return err
	}
	d.birdSock = d.path("bird.ctl")
	logf, err := os.Create(d.path("bird.log"))
	if err != nil {
		return err
	}
	c := d.command(context.Background(), "router", bird, "-f", "-c", conf, "-s", d.birdSock, "-P", d.path("bird.pid"))
	c.Stdout, c.Stderr = logf, logf
	if err := c.Start(); err != nil {
		logf.Close()
		return err
	}
	exited := make(chan struct{})
	go func() { _ = c.Wait(); logf.Close(); close(exited) }()
	d.onCleanup(func() { stopProcess(c, exited, 5*time.Second) })
	if !waitUntil(ctx, 15*time.Second, func() bool { _, err := d.birdc(ctx, "show", "status"); return err == nil }) {
		return fmt.Errorf("BIRD does not answer on %s; log %s", d.birdSock, d.path("bird.log"))
	}
	return nil
}

func (d *demo) birdc(ctx context.Context, args ...string) (string, error) {
	return d.cmd(ctx, "router", "birdc", append([]string{"-s", d.birdSock}, args...)...)
}

// startHABackend runs this program's backends in the node's namespace, on
// 127.0.0.1, answering with the node's name.
// startHANode starts one node's backend and, once its configuration
// passes gatehouse check, its gatehouse, and waits until it is ready.
func (d *demo) startHANode(ctx context.Context, n *haNode, pub string) error {
	if err := d.startHABackend(ctx, n); err != nil {
		return fmt.Errorf("%s backend: %w", n.name, err)
	}
	if err := d.writeHAConfig(n, pub); err != nil {
		return err
	}
	if out, err := d.cmd(ctx, "", d.bin, "check", "-c", n.config); err != nil {
		return fmt.Errorf("gatehouse check %s: %w\n%s", n.name, err, out)
	}
	d.onCleanup(func() { d.teardownNode(n) })
	var err error
	if n.cmd, n.exited, err = d.startGatehouse(ctx, n.name, n.config, n.log, haMetrics); err != nil {
		return fmt.Errorf("gatehouse run %s: %w", n.name, err)
	}
	return nil
}

func (d *demo) startHABackend(ctx context.Context, n *haNode) error {
	if err := os.MkdirAll(d.path(n.name), 0o700); err != nil {
		return err
	}
	c := d.command(context.Background(), n.name, selfExe(), subBackends, "--name", n.name,
		"--https", "127.0.0.1:8443", "--soap", "127.0.0.1:8080", "--tn3270", "127.0.0.1:2323",
		"--cert", d.path("pki/backend.pem"), "--key", d.path("pki/backend.key"))
	return d.startReadyLine(ctx, c, d.path(n.name+"/backends.log"))
}

func (d *demo) writeHAConfig(n *haNode, pub string) error {
	p := d.path("pki")
	cfg := fmt.Sprintf(`# gatehouse demo --ha configuration of %[1]s (written by test/demo); the
# nodes differ only in the paths, bgp.router_id and enforcement.pin_dir
interface: %[2]s
state_dir: %[3]s/state
admin_socket: %[3]s/admin.sock
shutdown_grace: 2s
enforcement:
  xdp: auto
  pin_dir: %[4]s/%[1]s
  nftables: true
  mode: listeners
metrics: {listen: "%[5]s"}
feeds:
  - {name: %[6]s, source: "file://%[7]s/feed/manifest.json", format: cidr, minisign_keys: ["%[8]s"], threshold: 1, refresh: 1m}
static_ranges: []
tenants:
  - {id: %[9]s, client_ca: %[10]s/acme-ca/ca.pem, identities: {uri_san: ["%[11]s"]}}
listeners:
  - name: web
    listen: ":443"
    protocol: https
    server_cert: %[10]s/server.pem
    server_key: %[10]s/server.key
    routes:
      - {tenant: %[9]s, backend: "https://127.0.0.1:8443", backend_ca: %[10]s/internal-ca/ca.pem}
bgp:
  local_as: %[12]d
  router_id: %[13]s
  neighbors: [{address: %[14]s, as: %[15]d}]
  announce: [%[16]s/32]
  drain: {withdraw_wait: 3s}
rules:
  reserved_exempt: [192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, "2001:db8::/32"]
`, n.name, outsideIf, d.path(n.name), d.bpffs, haMetrics, feedName, d.dir, pub, tenant, p, tenantURI,
		haNodeAS, n.addr, haRouterN, haRouterAS, haVIP)
	return os.WriteFile(n.config, []byte(cfg), 0o600)
}

// teardownNode lifts a node's kernel filters once it has stopped.
func (d *demo) teardownNode(n *haNode) {
	out, err := exec.Command("ip", "netns", "exec", d.ns[n.name], d.bin, "teardown", "--yes",
		"--pin-dir", filepath.Join(d.bpffs, n.name), "-c", n.config).CombinedOutput()
	if err != nil {
		fmt.Fprintf(d.out, "cleanup: gatehouse teardown on %s: %v\n%s", n.name, err, out)
	}
}

var haViaRE = regexp.MustCompile(`via (198\.51\.100\.\d+)`)

// haHops lists the next hops of the router's kernel route to the service
// address, sorted.
func (d *demo) haHops(ctx context.Context) []string {
	out, err := d.cmd(ctx, "router", "ip", "-4", "route", "show", haVIP+"/32")
	if err != nil {
		return nil
	}
	var hops []string
	for _, m := range haViaRE.FindAllStringSubmatch(out, -1) {
		hops = append(hops, m[1])
	}
	slices.Sort(hops)
	return slices.Compact(hops)
}
