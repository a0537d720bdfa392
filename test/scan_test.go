package test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// The internet of the scan tests: a router namespace joins the dmz (the
// daemon, XDP on its outside link), the tenant's cloud, an admin's network
// (a management range) and an attacker. The attacker forges SYNs in the
// tenant's and the admin's names; the router forwards them like the
// internet does, without asking where they came from.
const (
	scanGate4     = "198.51.100.1"
	scanRouter4   = "198.51.100.254"
	scanGate6     = "2001:db8:a::1"
	scanRouter6   = "2001:db8:a::fe"
	scanTenant4   = "192.0.2.10"
	scanTenant6   = "2001:db8:b::10"
	scanAdmin4    = "203.0.113.10"
	scanAdmin6    = "2001:db8:c::10"
	scanAttacker4 = "203.0.113.66"
	scanBackend6  = "2001:db8:e::10"
	scanMgmtPort  = 2222
	scanOpenPort  = 8080
)

type scanNet struct {
	router, dmz, tenant, admin, attacker *netns.NS
	outside                              string // the dmz's XDP interface
	attackerDev                          string // the attacker's link to the router
	routerMAC                            net.HardwareAddr
	serverCA                             *certstest.CA
	client                               *certstest.Leaf
	dir, config                          string
	metrics                              *http.Client
	d                                    *daemonProc
}

// newScanNet builds the internet of the scan tests and starts the daemon
// in mode; enforcement holds further enforcement keys, one per line.
func newScanNet(t *testing.T, mode string, enforcement ...string) *scanNet {
	t.Helper()
	netns.RequirePriv(t)
	sn := &scanNet{dir: t.TempDir()}
	sn.router = netns.New(t, "router")
	sn.dmz = netns.New(t, "dmz")
	sn.tenant = netns.New(t, "tenant")
	sn.admin = netns.New(t, "admin")
	sn.attacker = netns.New(t, "attacker")
	internal := netns.New(t, "internal")
	out := netns.Connect(t, sn.dmz, []string{scanGate4 + "/24", scanGate6 + "/64"}, sn.router, []string{scanRouter4 + "/24", scanRouter6 + "/64"})
	sn.outside = out.A
	netns.Connect(t, sn.tenant, []string{scanTenant4 + "/24", scanTenant6 + "/64"}, sn.router, []string{"192.0.2.1/24", "2001:db8:b::1/64"})
	netns.Connect(t, sn.admin, []string{scanAdmin4 + "/26", scanAdmin6 + "/64"}, sn.router, []string{"203.0.113.1/26", "2001:db8:c::1/64"})
	att := netns.Connect(t, sn.attacker, []string{scanAttacker4 + "/26"}, sn.router, []string{"203.0.113.65/26"})
	sn.attackerDev, sn.routerMAC = att.A, sn.router.HardwareAddr(t, att.B)
	netns.Connect(t, sn.dmz, []string{"2001:db8:e::1/64"}, internal, []string{scanBackend6 + "/64"})
	for _, kv := range [][2]string{{"net.ipv4.ip_forward", "1"}, {"net.ipv6.conf.all.forwarding", "1"},
		{"net.ipv4.conf.all.rp_filter", "0"}, {"net.ipv4.conf.default.rp_filter", "0"}} {
		sn.router.Sysctl(t, kv[0], kv[1])
	}
	sn.dmz.AddRoute(t, "default", scanRouter4)
	sn.dmz.AddRoute(t, "default", scanRouter6)
	sn.tenant.AddRoute(t, "default", "192.0.2.1")
	sn.tenant.AddRoute(t, "default", "2001:db8:b::1")
	sn.admin.AddRoute(t, "default", "203.0.113.1")
	sn.admin.AddRoute(t, "default", "2001:db8:c::1")
	sn.attacker.AddRoute(t, "default", "203.0.113.65")

	// The tenant's backend, and two services of the appliance itself: a
	// management service (an echo) and another open port.
	internalCA := certstest.NewCA(t, "internal")
	backendCert := internalCA.Server(t, scanBackend6)
	ln := internal.Listen(t, "tcp", "["+scanBackend6+"]:8443")
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, "backend of "+r.Header.Get("X-Gatehouse-Tenant"))
		}),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{backendCert.TLS}},
		ReadHeaderTimeout: 5 * time.Second,
	}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	for _, port := range []int{scanMgmtPort, scanOpenPort} {
		echoServer(t, sn.dmz.Listen(t, "tcp", fmt.Sprintf(":%d", port)))
	}

	sn.serverCA = certstest.NewCA(t, "gatehouse")
	server := sn.serverCA.Server(t, "gate.example")
	tenantCA := certstest.NewCA(t, "acme")
	sn.client = tenantCA.Client(t, "acme-cloud", "spiffe://acme/cloud")
	pinDir := mountBPFFS(t, sn.dir)
	cfg := fmt.Sprintf(`
interface: %[1]s
state_dir: %[2]s
shutdown_grace: 2s
admin_socket: %[2]s/admin.sock
enforcement:
  xdp: auto
  pin_dir: %[3]s/gatehouse
  nftables: true
  mode: %[4]s
  management:
    - {cidr: %[5]s/32, ports: [%[6]d]}
    - {cidr: "%[7]s/128", ports: [%[6]d]}
  scan_block: {distinct_ports: 10, window: 1m, block_for: 10m}
%[13]s
metrics: {listen: "127.0.0.1:9477"}
static_ranges: [192.0.2.0/24, "2001:db8:b::/64"]
tenants:
  - {id: acme, client_ca: %[8]s, identities: {uri_san: ["spiffe://acme/*"]}}
listeners:
  - name: web
    listen: ":443"
    protocol: https
    server_cert: %[9]s
    server_key: %[10]s
    routes:
      - {tenant: acme, backend: "https://[%[11]s]:8443", backend_ca: %[12]s}
`, sn.outside, sn.dir, pinDir, mode, scanAdmin4, scanMgmtPort, scanAdmin6, tenantCA.CertFile,
		server.CertFile, server.KeyFile, scanBackend6, internalCA.CertFile, "  "+strings.Join(enforcement, "\n  "))
	sn.config = filepath.Join(sn.dir, "gatehouse.yaml")
	if err := os.WriteFile(sn.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	sn.metrics = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return sn.dmz.DialContext(ctx, network, "", addr)
		},
	}}
	sn.d = launch(t, sn.dmz.Command(binary(t), "run", "-c", sn.config), "127.0.0.1:9477", sn.metrics)
	return sn
}

// echoServer echoes every connection of ln until it closes.
func echoServer(t *testing.T, ln net.Listener) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
}

// dial connects from src in ns to the gate; a dropped SYN is a timeout
// (the bound stays below the first SYN retransmission).
func dialGate(ns *netns.NS, src string, port int) (net.Conn, error) {
	dst := scanGate4
	if strings.Contains(src, ":") {
		dst = scanGate6
	}
	ctx, cancel := context.WithTimeout(context.Background(), 800*time.Millisecond)
	defer cancel()
	return ns.DialContext(ctx, "tcp", net.JoinHostPort(src, "0"), net.JoinHostPort(dst, strconv.Itoa(port)))
}

// echoes writes on c and reads the echo back.
func echoes(c net.Conn) error {
	c.SetDeadline(time.Now().Add(3 * time.Second))
	msg := []byte("still here\n")
	if _, err := c.Write(msg); err != nil {
		return err
	}
	_, err := io.ReadFull(c, make([]byte, len(msg)))
	return err
}

// tenantSession is one mutual-TLS connection of the tenant to the listener,
// kept open across requests.
type tenantSession struct {
	c  *tls.Conn
	br *bufio.Reader
}

func (sn *scanNet) openSession(src string) (*tenantSession, error) {
	raw, err := dialGate(sn.tenant, src, 443)
	if err != nil {
		return nil, err
	}
	c := tls.Client(raw, &tls.Config{RootCAs: sn.serverCA.Pool(), ServerName: "gate.example", Certificates: []tls.Certificate{sn.client.TLS}})
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := c.Handshake(); err != nil {
		c.Close()
		return nil, err
	}
	return &tenantSession{c: c, br: bufio.NewReader(c)}, nil
}

// request makes one request on the session and checks the backend answered.
func (s *tenantSession) request() error {
	s.c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(s.c, "GET /orders HTTP/1.1\r\nHost: gate.example\r\n\r\n"); err != nil {
		return err
	}
	resp, err := http.ReadResponse(s.br, nil)
	if err != nil {
		return err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode != 200 || string(body) != "backend of acme" {
		return fmt.Errorf("status %d: %q", resp.StatusCode, body)
	}
	return nil
}

// forge sends SYNs from the attacker, with src as their source, to count
// closed ports of the gate from first on. The router forwards them.
func (sn *scanNet) forge(t *testing.T, src string, first, count int) {
	t.Helper()
	s := netip.MustParseAddr(src)
	dst := netip.MustParseAddr(scanGate4)
	if s.Is6() {
		dst = netip.MustParseAddr(scanGate6)
	}
	var frames [][]byte
	for i := range count {
		f, err := netns.Packet{Src: s, Dst: dst, Proto: 6, SrcPort: uint16(40000 + i), DstPort: uint16(first + i),
			TCPFlags: 0x02, ID: uint32(i + 1)}.Frames(sn.routerMAC)
		if err != nil {
			t.Fatal(err)
		}
		frames = append(frames, f...)
	}
	if err := sn.attacker.Send(sn.attackerDev, frames); err != nil {
		t.Fatal(err)
	}
}

// blockedSet returns the nftables blocked set of the family of addr.
func (sn *scanNet) blockedSet(t *testing.T, v6 bool) string {
	t.Helper()
	set := "blocked_v4"
	if v6 {
		set = "blocked_v6"
	}
	return sn.dmz.Exec(t, "nft", "list", "set", "inet", "gatehouse", set)
}

func (sn *scanNet) metric(t *testing.T, re string) float64 {
	t.Helper()
	tp := &topology{d: sn.d}
	return tp.metric(t, re)
}

// TestForgedScanCutsNoOne: in both modes, an attacker forges port scans in
// the names of a tenant and of an admin. The tenant's address ends in the
// blocklist of both layers, yet its established mutual-TLS session goes on,
// and it opens new ones; the admin is never blocked and keeps its
// management service, established and new. The attacker's own scan, from
// its real address, gets it blocked: in listeners mode it loses the open
// port it reached before.
func TestForgedScanCutsNoOne(t *testing.T) {
	for _, mode := range []string{"listeners", "strict"} {
		t.Run(mode, func(t *testing.T) { testForgedScan(t, mode) })
	}
}

func testForgedScan(t *testing.T, mode string) {
	sn := newScanNet(t, mode)
	// Before: the tenant's session (both families), the admin's service.
	var sessions []*tenantSession
	for _, src := range []string{scanTenant4, scanTenant6} {
		s, err := sn.openSession(src)
		if err != nil {
			t.Fatalf("tenant session from %s before the attack: %v\n%s", src, err, sn.d.out.String())
		}
		defer s.c.Close()
		if err := s.request(); err != nil {
			t.Fatalf("tenant request from %s before the attack: %v", src, err)
		}
		sessions = append(sessions, s)
	}
	adminConn, err := dialGate(sn.admin, scanAdmin4, scanMgmtPort)
	if err != nil {
		t.Fatalf("admin before the attack: %v", err)
	}
	defer adminConn.Close()
	if mode == "listeners" {
		c, err := dialGate(sn.attacker, scanAttacker4, scanOpenPort)
		if err != nil {
			t.Fatalf("the attacker cannot reach the open port before its scan: %v", err)
		}
		c.Close()
	}

	// The forged scans: 30 closed ports in each name, far over 10.
	sn.forge(t, scanTenant4, 3000, 30)
	sn.forge(t, scanTenant6, 3000, 30)
	sn.forge(t, scanAdmin4, 3000, 30)
	sn.forge(t, scanAdmin6, 3000, 30)
	sn.d.waitFor(t, "the tenant's addresses in both blocked sets", func() bool {
		return strings.Contains(sn.blockedSet(t, false), scanTenant4) && strings.Contains(sn.blockedSet(t, true), "2001:db8:b::")
	})
	if v := sn.metric(t, `gatehouse_xdp_packets_total\{action="drop",reason="scan_detected"\}`); v < 2 {
		t.Errorf("XDP scan_detected = %v, want the forged scans caught by the program", v)
	}

	// After: every established and every new flow of tenant and admin.
	for i, s := range sessions {
		if err := s.request(); err != nil {
			t.Errorf("the tenant's established session %d was cut by the forged scan: %v", i, err)
		}
	}
	for _, src := range []string{scanTenant4, scanTenant6} {
		s, err := sn.openSession(src)
		if err != nil {
			t.Errorf("the tenant's new session from %s after the forged scan: %v", src, err)
			continue
		}
		if err := s.request(); err != nil {
			t.Errorf("the tenant's new session from %s: %v", src, err)
		}
		s.c.Close()
	}
	if err := echoes(adminConn); err != nil {
		t.Errorf("the admin's established connection was cut: %v", err)
	}
	for _, src := range []string{scanAdmin4, scanAdmin6} {
		c, err := dialGate(sn.admin, src, scanMgmtPort)
		if err != nil {
			t.Errorf("the admin's new connection from %s after the forged scan: %v", src, err)
			continue
		}
		if err := echoes(c); err != nil {
			t.Errorf("the admin's new connection from %s: %v", src, err)
		}
		c.Close()
	}
	for _, v6 := range []bool{false, true} {
		if set := sn.blockedSet(t, v6); strings.Contains(set, scanAdmin4) || strings.Contains(set, "2001:db8:c::") {
			t.Errorf("a management source was blocked:\n%s", set)
		}
	}
	// The blocked tenant address loses the other port (listeners mode;
	// strict mode gives it no other port to lose).
	if mode == "listeners" {
		if c, err := dialGate(sn.tenant, scanTenant4, scanOpenPort); err == nil {
			c.Close()
			t.Error("the blocked tenant address still opens flows to another port")
		}
	}

	// The attacker's own scan: blocked in both layers.
	var wg sync.WaitGroup
	for port := 4000; port < 4020; port++ {
		wg.Go(func() {
			if c, err := dialGate(sn.attacker, scanAttacker4, port); err == nil {
				c.Close()
			}
		})
	}
	wg.Wait()
	sn.d.waitFor(t, "the attacker in blocked_v4", func() bool { return strings.Contains(sn.blockedSet(t, false), scanAttacker4) })
	var ne net.Error
	if c, err := dialGate(sn.attacker, scanAttacker4, scanOpenPort); err == nil {
		c.Close()
		t.Error("the blocked attacker reached the open port")
	} else if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("the blocked attacker's SYN was answered (%v), want it dropped", err)
	}
	if v := sn.metric(t, `gatehouse_xdp_packets_total\{action="drop",reason="blocked"\}`); v < 1 {
		t.Errorf("XDP blocked drops = %v", v)
	}
	// Both layers list the tenant's two sources and the attacker (the
	// gauges follow their polls).
	sn.d.waitFor(t, "three blocked sources in both layers' gauges", func() bool {
		return sn.metric(t, `gatehouse_nft_blocked_sources`) >= 3 && sn.metric(t, `gatehouse_xdp_blocked_sources`) >= 3
	})
	out, err := exec.Command(binary(t), "status", "-c", sn.config).CombinedOutput()
	for _, want := range []string{`xdp_packets_total{action="drop",reason="scan_detected"}`, "nft_blocked_sources", "xdp_blocked_sources"} {
		if err != nil || !strings.Contains(string(out), want) {
			t.Errorf("status does not show %s: %v\n%s", want, err, out)
		}
	}
}
