package test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// The fleet's internet: two nodes behind one router, each on its own
// link, a tenant and an attacker. The nodes reach each other's fleet port
// through the router, admitted as each other's management source.
const (
	fleetA4        = "198.51.100.1"
	fleetB4        = "198.51.100.17"
	fleetTenant4   = "192.0.2.10"
	fleetAttacker4 = "203.0.113.66"
	fleetPort      = 9478
	fleetOpenPort  = 8080
)

type fleetNet struct {
	router, tenant, attacker *netns.NS
	attackerDev              string
	routerMAC                net.HardwareAddr
	nodes                    map[string]*fleetNS // by address
	serverCA, fleetCA        *certstest.CA
	tenantCA                 *certstest.CA
	client                   *certstest.Leaf
	certs                    map[string]*certstest.Leaf // fleet certificate by node address
}

type fleetNS struct {
	ns   *netns.NS
	addr string
	d    *daemonProc
}

func newFleetNet(t *testing.T) *fleetNet {
	t.Helper()
	netns.RequirePriv(t)
	fn := &fleetNet{nodes: map[string]*fleetNS{}, certs: map[string]*certstest.Leaf{}}
	fn.router = netns.New(t, "router")
	fn.tenant = netns.New(t, "tenant")
	fn.attacker = netns.New(t, "attacker")
	netns.Connect(t, fn.tenant, []string{fleetTenant4 + "/24"}, fn.router, []string{"192.0.2.1/24"})
	att := netns.Connect(t, fn.attacker, []string{fleetAttacker4 + "/26"}, fn.router, []string{"203.0.113.65/26"})
	fn.attackerDev, fn.routerMAC = att.A, fn.router.HardwareAddr(t, att.B)
	fn.router.Sysctl(t, "net.ipv4.ip_forward", "1")
	fn.tenant.AddRoute(t, "default", "192.0.2.1")
	fn.attacker.AddRoute(t, "default", "203.0.113.65")
	for _, n := range []struct{ addr, gw, role string }{{fleetA4, "198.51.100.14", "fleeta"}, {fleetB4, "198.51.100.30", "fleetb"}} {
		ns := netns.New(t, n.role)
		netns.Connect(t, ns, []string{n.addr + "/28"}, fn.router, []string{n.gw + "/28"})
		ns.AddRoute(t, "default", n.gw)
		fn.nodes[n.addr] = &fleetNS{ns: ns, addr: n.addr}
	}
	fn.serverCA = certstest.NewCA(t, "gatehouse")
	fn.fleetCA = certstest.NewCA(t, "fleet")
	fn.tenantCA = certstest.NewCA(t, "acme")
	fn.client = fn.tenantCA.Client(t, "acme-cloud", "spiffe://acme/cloud")
	for addr := range fn.nodes {
		fn.certs[addr] = fn.fleetCA.Issue(t, &x509.Certificate{
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			IPAddresses: []net.IP{net.ParseIP(addr)},
		})
	}
	return fn
}

// start runs the daemon of the node at addr with nftables (XDP off: the
// blocks are nftables' to share), its peer the other node.
func (fn *fleetNet) start(t *testing.T, addr, peer string) {
	t.Helper()
	n := fn.nodes[addr]
	dir := t.TempDir()
	server := fn.serverCA.Server(t, "gate.example")
	caFile := fn.tenantCA.CertFile
	echoServer(t, n.ns.Listen(t, "tcp", "127.0.0.1:7000"))
	echoServer(t, n.ns.Listen(t, "tcp", fmt.Sprintf(":%d", fleetOpenPort)))
	cfg := fmt.Sprintf(`
state_dir: %[1]s
shutdown_grace: 2s
admin_socket: %[1]s/admin.sock
enforcement:
  xdp: "off"
  nftables: true
  mode: listeners
  management: [{cidr: %[2]s/32, ports: [%[3]d]}]
  scan_block: {distinct_ports: 10, window: 1m, block_for: 10m}
metrics: {listen: "127.0.0.1:9477"}
static_ranges: [192.0.2.0/24]
tenants: [{id: acme, client_ca: %[4]s, identities: {uri_san: ["spiffe://acme/*"]}}]
listeners:
  - {name: raw, listen: ":443", protocol: tcp, server_cert: %[5]s, server_key: %[6]s,
     routes: [{tenant: acme, backend: "127.0.0.1:7000"}]}
fleet:
  listen: "%[7]s:%[3]d"
  cert: %[8]s
  key: %[9]s
  peer_ca: %[10]s
  peers: ["https://%[2]s:%[3]d"]
  pull_interval: 1s
  block_ttl: 5m
`, dir, peer, fleetPort, caFile, server.CertFile, server.KeyFile, addr, fn.certs[addr].CertFile, fn.certs[addr].KeyFile, fn.fleetCA.CertFile)
	path := filepath.Join(dir, "gatehouse.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	metrics := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			return n.ns.DialContext(ctx, network, "", a)
		},
	}}
	n.d = launch(t, n.ns.Command(binary(t), "run", "-c", path), "127.0.0.1:9477", metrics)
}

func (fn *fleetNet) dial(ns *netns.NS, src, dst string, port int) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 800*time.Millisecond)
	defer cancel()
	return ns.DialContext(ctx, "tcp", net.JoinHostPort(src, "0"), net.JoinHostPort(dst, fmt.Sprint(port)))
}

// session opens the tenant's mutual-TLS session to the node at dst.
func (fn *fleetNet) session(dst string) (*tls.Conn, *bufio.Reader, error) {
	raw, err := fn.dial(fn.tenant, fleetTenant4, dst, 443)
	if err != nil {
		return nil, nil, err
	}
	c := tls.Client(raw, &tls.Config{RootCAs: fn.serverCA.Pool(), ServerName: "gate.example", Certificates: []tls.Certificate{fn.client.TLS}})
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := c.Handshake(); err != nil {
		c.Close()
		return nil, nil, err
	}
	return c, bufio.NewReader(c), nil
}

func sessionEchoes(c *tls.Conn, br *bufio.Reader) error {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "still here\n"); err != nil {
		return err
	}
	line, err := br.ReadString('\n')
	if err == nil && line != "still here\n" {
		err = fmt.Errorf("echo %q", line)
	}
	return err
}

func (n *fleetNS) blocked(t *testing.T) string {
	return n.ns.Exec(t, "nft", "list", "set", "inet", "gatehouse", "blocked_v4")
}

// forge sends SYNs with src as their source to count closed ports of dst.
func (fn *fleetNet) forge(t *testing.T, src, dst string, first, count int) {
	t.Helper()
	var frames [][]byte
	for i := range count {
		f, err := netns.Packet{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), Proto: 6, SrcPort: uint16(40000 + i),
			DstPort: uint16(first + i), TCPFlags: 0x02, ID: uint32(i + 1)}.Frames(fn.routerMAC)
		if err != nil {
			t.Fatal(err)
		}
		frames = append(frames, f...)
	}
	if err := fn.attacker.Send(fn.attackerDev, frames); err != nil {
		t.Fatal(err)
	}
}

// peerGet asks the node at dst for its blocks from the node at src's
// namespace and address, presenting cert.
func (fn *fleetNet) peerGet(src string, dst string, cert tls.Certificate) (string, error) {
	n := fn.nodes[src]
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			return n.ns.DialContext(ctx, network, net.JoinHostPort(src, "0"), a)
		},
		TLSClientConfig: &tls.Config{RootCAs: fn.fleetCA.Pool(), Certificates: []tls.Certificate{cert}},
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get(fmt.Sprintf("https://%s:%d/fleet/v1/blocks", dst, fleetPort))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// TestFleetSharesScanBlocks: a real scan against node A gets the scanner
// blocked on node B within seconds (it loses B's open port), while the
// tenant's session on B goes on. A scan forged in the tenant's name on A
// reaches B's blocklist too, and cuts the tenant on B no more than on A:
// its established session and new sessions to the listener work. B does
// not serve back what it took from A, and refuses a peer whose certificate
// is not of the fleet CA.
func TestFleetSharesScanBlocks(t *testing.T) {
	fn := newFleetNet(t)
	fn.start(t, fleetA4, fleetB4)
	fn.start(t, fleetB4, fleetA4)
	a, b := fn.nodes[fleetA4], fn.nodes[fleetB4]

	sess, br, err := fn.session(fleetB4)
	if err != nil {
		t.Fatalf("tenant session on B: %v\n%s", err, b.d.out.String())
	}
	defer sess.Close()
	if err := sessionEchoes(sess, br); err != nil {
		t.Fatalf("tenant session on B: %v", err)
	}
	c, err := fn.dial(fn.attacker, fleetAttacker4, fleetB4, fleetOpenPort)
	if err != nil {
		t.Fatalf("the attacker cannot reach B's open port before its scan: %v", err)
	}
	c.Close()

	// The real scan, against A only.
	var wg sync.WaitGroup
	for port := 4000; port < 4020; port++ {
		wg.Go(func() {
			if c, err := fn.dial(fn.attacker, fleetAttacker4, fleetA4, port); err == nil {
				c.Close()
			}
		})
	}
	wg.Wait()
	a.d.waitFor(t, "the scanner in A's blocklist", func() bool { return strings.Contains(a.blocked(t), fleetAttacker4) })
	b.d.waitFor(t, "the scanner in B's blocklist", func() bool { return strings.Contains(b.blocked(t), fleetAttacker4) })
	var ne net.Error
	if c, err := fn.dial(fn.attacker, fleetAttacker4, fleetB4, fleetOpenPort); err == nil {
		c.Close()
		t.Error("the scanner blocked on A still reaches B's open port")
	} else if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("the scanner's SYN to B was answered (%v), want it dropped", err)
	}
	tp := &topology{d: b.d}
	if v := tp.metric(t, fmt.Sprintf(`gatehouse_fleet_blocks_received_total\{peer="%s:%d"\}`, fleetA4, fleetPort)); v < 1 {
		t.Errorf("B's gatehouse_fleet_blocks_received_total from A = %v", v)
	}
	if v := tp.metric(t, fmt.Sprintf(`gatehouse_fleet_peer_up\{peer="%s:%d"\}`, fleetA4, fleetPort)); v != 1 {
		t.Errorf("B's gatehouse_fleet_peer_up for A = %v", v)
	}

	// A scan forged in the tenant's name on A.
	fn.forge(t, fleetTenant4, fleetA4, 3000, 30)
	a.d.waitFor(t, "the tenant's address in A's blocklist", func() bool { return strings.Contains(a.blocked(t), fleetTenant4) })
	b.d.waitFor(t, "the tenant's address in B's blocklist", func() bool { return strings.Contains(b.blocked(t), fleetTenant4) })
	if err := sessionEchoes(sess, br); err != nil {
		t.Errorf("the tenant's established session on B was cut by a block shared from A: %v", err)
	}
	s2, br2, err := fn.session(fleetB4)
	if err != nil {
		t.Fatalf("the tenant's new session on B after the shared block: %v", err)
	}
	if err := sessionEchoes(s2, br2); err != nil {
		t.Errorf("the tenant's new session on B: %v", err)
	}
	s2.Close()

	// B serves only what it learned itself: nothing here.
	own, err := tls.LoadX509KeyPair(fn.certs[fleetA4].CertFile, fn.certs[fleetA4].KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	body, err := fn.peerGet(fleetA4, fleetB4, own)
	if err != nil {
		t.Fatalf("A's certificate refused by B: %v", err)
	}
	if strings.Contains(body, fleetAttacker4) || strings.Contains(body, fleetTenant4) {
		t.Errorf("B serves blocks it took from A (a loop): %s", body)
	}
	// A certificate of another CA, from A's address (management admits it
	// to the port): the handshake is refused.
	rogue := certstest.NewCA(t, "rogue").Issue(t, &x509.Certificate{
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, IPAddresses: []net.IP{net.ParseIP(fleetA4)}})
	if body, err := fn.peerGet(fleetA4, fleetB4, rogue.TLS); err == nil {
		t.Errorf("B served a peer with a certificate of another CA: %s", body)
	}
}
