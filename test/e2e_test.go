package test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// topology is the smallest real deployment: a "cloud" namespace whose
// address 192.0.2.10 is admitted and whose second address 198.51.100.66 is
// not (the intruder, on the same wire), the "dmz" namespace running the
// gatehouse binary with XDP on its outside veth and its nftables table, and
// an "internal" namespace with the tenant's HTTPS backend.
type topology struct {
	cloud, dmz, internal *netns.NS
	outside              netns.Veth
	serverCA, tenantCA   *certstest.CA
	client               *certstest.Leaf
	dir, config, pinDir  string
	metricsClient        *http.Client
	d                    *daemonProc
	bin                  string   // the gatehouse binary; empty: binary(t)
	policyFiles          []string // the certificates and keys the configuration names
}

// topologyOptions vary newTopology for one test.
type topologyOptions struct {
	// enforcement is added to the enforcement section (YAML lines
	// indented by two spaces).
	enforcement string
	bin         string // see topology.bin
}

const (
	cloudAddr    = "192.0.2.10"
	intruderAddr = "198.51.100.66"
	gateV4       = "192.0.2.1"
	gateV4Alt    = "198.51.100.1"
	cloudV6      = "2001:db8:1::10"
	intruderV6   = "2001:db8:1::ff:66"
	gateV6       = "2001:db8:1::1"
	backendAddr  = "203.0.113.10"
)

func newTopology(t *testing.T) *topology {
	t.Helper()
	return newTopologyWith(t, topologyOptions{})
}

func newTopologyWith(t *testing.T, o topologyOptions) *topology {
	t.Helper()
	netns.RequirePriv(t)
	tp := &topology{dir: t.TempDir(), bin: o.bin}
	tp.cloud = netns.New(t, "cloud")
	tp.dmz = netns.New(t, "dmz")
	tp.internal = netns.New(t, "internal")
	tp.outside = netns.Connect(t,
		tp.cloud, []string{cloudAddr + "/24", intruderAddr + "/24", cloudV6 + "/64", intruderV6 + "/64"},
		tp.dmz, []string{gateV4 + "/24", gateV4Alt + "/24", gateV6 + "/64"})
	netns.Connect(t, tp.dmz, []string{"203.0.113.1/24"}, tp.internal, []string{backendAddr + "/24"})

	// The tenant's internal backend speaks TLS with its own CA.
	internalCA := certstest.NewCA(t, "internal")
	backendCert := internalCA.Server(t, backendAddr)
	ln := tp.internal.Listen(t, "tcp", backendAddr+":8443")
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "backend of %s: client %s", r.Header.Get("X-Gatehouse-Tenant"), r.Header.Get("X-Forwarded-For"))
		}),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{backendCert.TLS}},
		ReadHeaderTimeout: 5 * time.Second,
	}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })

	tp.serverCA = certstest.NewCA(t, "gatehouse")
	server := tp.serverCA.Server(t, "gate.example")
	tp.tenantCA = certstest.NewCA(t, "acme")
	tp.client = tp.tenantCA.Client(t, "acme-cloud", "spiffe://acme/cloud")

	pinDir := mountBPFFS(t, tp.dir)
	tp.pinDir = pinDir + "/gatehouse"

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
%[9]smetrics: {listen: "127.0.0.1:9477"}
static_ranges: [192.0.2.0/25, "2001:db8:1::/112"]
tenants:
  - {id: acme, client_ca: %[4]s, identities: {uri_san: ["spiffe://acme/*"]}}
listeners:
  - name: web
    listen: ":443"
    protocol: https
    server_cert: %[5]s
    server_key: %[6]s
    routes:
      - {tenant: acme, backend: "https://%[7]s:8443", backend_ca: %[8]s}
`, tp.outside.B, tp.dir, pinDir, tp.tenantCA.CertFile, server.CertFile, server.KeyFile, backendAddr, internalCA.CertFile, o.enforcement)
	tp.policyFiles = []string{tp.tenantCA.CertFile, server.CertFile, server.KeyFile, internalCA.CertFile}
	path := filepath.Join(tp.dir, "gatehouse.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	metricsClient := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return tp.dmz.DialContext(ctx, network, "", addr)
		},
	}}
	tp.config, tp.metricsClient = path, metricsClient
	tp.start(t)
	return tp
}

// start runs the daemon in the dmz namespace and waits until it is ready.
func (tp *topology) start(t *testing.T) {
	t.Helper()
	bin := tp.bin
	if bin == "" {
		bin = binary(t)
	}
	tp.d = launch(t, tp.dmz.Command(bin, "run", "-c", tp.config), "127.0.0.1:9477", tp.metricsClient)
}

// probe opens a TCP connection from src to dst:443 in the cloud namespace
// and says what happened to it: "connected", "refused" (a RST came back: the
// packet reached the host) or "dropped" (no answer: filtered). On a
// listener port synproxy answers the handshake itself; with no listener
// behind it, the reset comes as soon as the handshake proved the source,
// and the connect fails with ECONNRESET: refused as well.
func (tp *topology) probe(t *testing.T, src, dst string) string {
	t.Helper()
	got, err := tp.tryProbe(src, dst, 1500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// tryProbe is probe for other goroutines than the test's own.
func (tp *topology) tryProbe(src, dst string, wait time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, err := tp.cloud.DialContext(ctx, "tcp", net.JoinHostPort(src, "0"), net.JoinHostPort(dst, "443"))
	var ne net.Error
	switch {
	case err == nil:
		c.Close()
		return "connected", nil
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		return "dropped", nil
	case errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET):
		return "refused", nil
	}
	return "", fmt.Errorf("probe %s → %s: %w", src, dst, err)
}

// get makes one HTTPS request from the cloud namespace, from source src,
// presenting cert (nil: none).
func (tp *topology) get(ctx context.Context, src, dst string, cert *certstest.Leaf) (string, error) {
	tc := &tls.Config{RootCAs: tp.serverCA.Pool(), ServerName: "gate.example"}
	if cert != nil {
		tc.Certificates = []tls.Certificate{cert.TLS}
	}
	tr := &http.Transport{
		TLSClientConfig: tc,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return tp.cloud.DialContext(ctx, network, net.JoinHostPort(src, "0"), addr)
		},
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, "GET", "https://"+net.JoinHostPort(dst, "443")+"/orders", nil)
	if err != nil {
		return "", err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return string(b), fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	return string(b), err
}

// metric returns the value of the first exposition line matching re.
func (tp *topology) metric(t *testing.T, re string) float64 {
	t.Helper()
	_, body := tp.d.get(t, "/metrics")
	m := regexp.MustCompile("(?m)^" + re + ` ([0-9.e+]+)$`).FindStringSubmatch(body)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

// TestEndToEndHTTPS sends one real connection through XDP, nftables,
// mutual TLS and the HTTPS proxy to an internal backend, and checks that
// each layer refuses what it must.
func TestEndToEndHTTPS(t *testing.T) {
	tp := newTopology(t)

	t.Run("admitted tenant reaches its backend", func(t *testing.T) {
		for _, dst := range []string{gateV4, gateV6} {
			src := cloudAddr
			if strings.Contains(dst, ":") {
				src = cloudV6
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			body, err := tp.get(ctx, src, dst, tp.client)
			cancel()
			if err != nil {
				t.Fatalf("%s → %s: %v\n%s", src, dst, err, tp.d.out.String())
			}
			if want := "backend of acme: client " + src; body != want {
				t.Errorf("%s: body %q, want %q", dst, body, want)
			}
		}
	})

	t.Run("no client certificate fails the handshake", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := tp.get(ctx, cloudAddr, gateV4, nil)
		if err == nil {
			t.Fatal("request without a client certificate succeeded")
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("want a refused handshake, got a timeout: %v", err)
		}
		tp.d.waitFor(t, "no_cert counted", func() bool {
			return tp.metric(t, `gatehouse_tls_handshakes_total\{[^}]*result="no_cert"[^}]*\}`) >= 1
		})
	})

	t.Run("intruder is dropped before the listener", func(t *testing.T) {
		for _, c := range []struct{ src, dst string }{{intruderAddr, gateV4Alt}, {intruderAddr, gateV4}, {intruderV6, gateV6}} {
			if got := tp.probe(t, c.src, c.dst); got != "dropped" {
				t.Errorf("%s → %s:443: %s, want the SYN silently dropped", c.src, c.dst, got)
			}
		}
		if v := tp.metric(t, `gatehouse_xdp_packets_total\{[^}]*reason="not_admitted"[^}]*\}`); v < 3 {
			t.Errorf("xdp not_admitted drops = %v, want ≥ 3", v)
		}
	})

	t.Run("status shows the generation in force", func(t *testing.T) {
		out, err := exec.Command(binary(t), "status", "-c", tp.config).CombinedOutput()
		if err != nil {
			t.Fatalf("status: %v\n%s", err, out)
		}
		if !regexp.MustCompile(`(?m)^xdp +native on ` + regexp.QuoteMeta(tp.outside.B) + ` `).Match(out) {
			t.Errorf("status lacks the XDP line for %s:\n%s", tp.outside.B, out)
		}
		for _, want := range []string{"generation 1", "nftables on", "static", "acme",
			`xdp_packets_total{action="drop",reason="not_admitted"}`, "→ acme path /"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("status lacks %q:\n%s", want, out)
			}
		}
		if !regexp.MustCompile(`(?m)^  web +:443 +https$`).Match(out) {
			t.Errorf("status lacks the listener web :443 https:\n%s", out)
		}
		raw, err := exec.Command(binary(t), "status", "--json", "-c", tp.config).Output()
		var st struct {
			Generation uint64 `json:"generation"`
			XDPMode    string `json:"xdp_mode"`
		}
		if err != nil || json.Unmarshal(raw, &st) != nil || st.Generation != 1 || st.XDPMode != "native" {
			t.Errorf("status --json: %v %+v\n%s", err, st, raw)
		}
		if fi, err := os.Stat(filepath.Join(tp.dir, "admin.sock")); err != nil {
			t.Errorf("admin socket: %v", err)
		} else if fi.Mode().Perm() != 0o600 {
			t.Errorf("admin socket mode %v, want 0600", fi.Mode().Perm())
		}
	})

	t.Run("prometheus scrapes the daemon", func(t *testing.T) {
		_, exposition := tp.d.get(t, "/metrics")
		promtoolCheckMetrics(t, []byte(exposition))
		p := startPromServerIn(t, tp.dmz, "127.0.0.1:9477")
		got := p.waitValue(t, `gatehouse_xdp_packets_total{action="drop",reason="not_admitted"}`)
		if got.Value < 3 {
			t.Errorf("PromQL: XDP not_admitted drops = %v, want ≥ 3", got.Value)
		}
	})

	t.Run("kernel state is in place", func(t *testing.T) {
		out := tp.dmz.Exec(t, "nft", "list", "table", "inet", "gatehouse")
		for _, want := range []string{"admitted_v4", "192.0.2.0/25", "2001:db8:1::/112"} {
			if !strings.Contains(out, want) {
				t.Errorf("nft table lacks %q:\n%s", want, out)
			}
		}
		// One gauge per mode, 1 for the mode in force.
		native := tp.metric(t, `gatehouse_xdp_attach_mode\{mode="native"\}`)
		generic := tp.metric(t, `gatehouse_xdp_attach_mode\{mode="generic"\}`)
		if native+generic != 1 || native*generic != 0 {
			t.Errorf("xdp attach mode: native=%v generic=%v, want exactly one 1", native, generic)
		}
		if out := tp.dmz.Exec(t, "ip", "link", "show", tp.outside.B); !strings.Contains(out, "xdp") {
			t.Errorf("no XDP program on %s:\n%s", tp.outside.B, out)
		}
	})
}

// TestCrashRestartTeardown: the kernel filters outlive the daemon. After a
// kill -9 the intruder is still dropped while the admitted source reaches
// the (now closed) port; a restarted daemon adopts the pinned filter and
// serves again; only teardown removes the filters.
func TestCrashRestartTeardown(t *testing.T) {
	tp := newTopology(t)
	if got := tp.probe(t, cloudAddr, gateV4); got != "connected" {
		t.Fatalf("admitted source before the crash: %s", got)
	}

	if err := tp.d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-tp.d.exited
	// Both layers stay: XDP attached through its pinned link, the table.
	if link := tp.dmz.Exec(t, "ip", "link", "show", tp.outside.B); !strings.Contains(link, "xdp") {
		t.Errorf("XDP detached by kill -9:\n%s", link)
	}
	tp.dmz.Exec(t, "nft", "list", "table", "inet", "gatehouse")
	if got := tp.probe(t, intruderAddr, gateV4Alt); got != "dropped" {
		t.Errorf("intruder after kill -9: %s, want dropped", got)
	}
	if got := tp.probe(t, cloudAddr, gateV4); got != "refused" {
		t.Errorf("admitted source after kill -9: %s, want refused (no listener, not filtered)", got)
	}

	tp.start(t)
	if !strings.Contains(tp.d.out.String(), "adopt") {
		t.Errorf("restarted daemon did not say it adopted the pinned filter:\n%s", tp.d.out.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	if _, err := tp.get(ctx, cloudAddr, gateV4, tp.client); err != nil {
		t.Errorf("admitted tenant after restart: %v", err)
	}
	cancel()
	if got := tp.probe(t, intruderAddr, gateV4Alt); got != "dropped" {
		t.Errorf("intruder after restart: %s, want dropped", got)
	}

	if err := tp.d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-tp.d.exited
	if got := tp.probe(t, intruderAddr, gateV4Alt); got != "dropped" {
		t.Errorf("intruder after a clean stop: %s, want dropped", got)
	}
	out, err := tp.dmz.Command(binary(t), "teardown", "--yes", "--pin-dir", tp.pinDir, "-c", tp.config).CombinedOutput()
	if err != nil {
		t.Fatalf("teardown: %v\n%s", err, out)
	}
	if got := tp.probe(t, intruderAddr, gateV4Alt); got != "refused" {
		t.Errorf("intruder after teardown: %s, want refused (nothing filters, nothing listens)", got)
	}
	if err := tp.dmz.Command("nft", "list", "table", "inet", "gatehouse").Run(); err == nil {
		t.Error("table inet gatehouse survived teardown")
	}
	if link := tp.dmz.Exec(t, "ip", "link", "show", tp.outside.B); strings.Contains(link, "xdp") {
		t.Errorf("XDP still attached after teardown:\n%s", link)
	}
	if entries, _ := os.ReadDir(tp.pinDir); len(entries) != 0 {
		t.Errorf("pins left after teardown: %v", entries)
	}
}

// TestRestartUnderTraffic: while an admitted tenant makes a new request
// every 100 ms and the intruder probes just as often, the daemon is killed
// with SIGKILL and started again. The tenant's requests fail at most for
// the time the daemon is down, and not one intruder packet gets through
// (a refused connection would mean its SYN reached the host).
func TestRestartUnderTraffic(t *testing.T) {
	tp := newTopology(t)
	// A request's bound: generous, so that only the restart fails one.
	const requestTimeout = 5 * time.Second
	// A sample is one tenant request, judged by when it began: a request
	// begun while the daemon was down can end (time out on a dropped SYN)
	// well after the new daemon is ready.
	type sample struct {
		at  time.Time
		ok  bool
		err error
	}
	var (
		mu        sync.Mutex
		tenant    []sample
		intrusion []string
		probes    int
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // the tenant
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			began := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
			_, err := tp.get(ctx, cloudAddr, gateV4, tp.client)
			cancel()
			mu.Lock()
			tenant = append(tenant, sample{began, err == nil, err})
			mu.Unlock()
		}
	}()
	go func() { // the intruder
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			got, err := tp.tryProbe(intruderAddr, gateV4Alt, 200*time.Millisecond) // a RST takes well under 1 ms here
			mu.Lock()
			probes++
			if err != nil || got != "dropped" {
				intrusion = append(intrusion, fmt.Sprintf("%s: %s %v", time.Now().Format("15:04:05.000"), got, err))
			}
			mu.Unlock()
		}
	}()

	// Enough traffic to judge, counted rather than timed: a loaded
	// machine serves fewer requests a second.
	succeeded := func(what string, since time.Time, n int) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			mu.Lock()
			ok := 0
			for _, s := range tenant {
				if s.ok && s.at.After(since) {
					ok++
				}
			}
			enough := ok >= n && probes >= n
			mu.Unlock()
			if enough {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("fewer than %d tenant requests succeeded %s within 30s", n, what)
	}
	start := time.Now()
	succeeded("before the kill", start, 5)
	down := time.Now()
	if err := tp.d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-tp.d.exited
	tp.start(t) // returns once the new daemon is ready
	up := time.Now()
	succeeded("after the restart", up, 10)
	close(stop)
	wg.Wait()

	if len(intrusion) > 0 {
		t.Errorf("intruder packets got through during the restart: %v", intrusion)
	}
	// Every request begun once the new daemon is ready succeeds, and the
	// longest run of failed requests lies within the restart, give or take
	// one request's timeout.
	var failStart time.Time
	var longest time.Duration
	okAfter := 0
	for _, s := range tenant {
		if !s.ok && s.at.After(up) {
			t.Errorf("a tenant request begun %s after the new daemon was ready failed: %v", s.at.Sub(up).Round(time.Millisecond), s.err)
		}
		if s.ok && s.at.After(up) {
			okAfter++
		}
		switch {
		case !s.ok && failStart.IsZero():
			failStart = s.at
		case s.ok && !failStart.IsZero():
			longest = max(longest, s.at.Sub(failStart))
			failStart = time.Time{}
		}
	}
	if restart := up.Sub(down); longest > restart+requestTimeout+500*time.Millisecond {
		t.Errorf("tenant requests failed for %s, the restart took %s", longest, restart)
	}
	if okAfter < 10 {
		t.Errorf("%d tenant requests begun after the restart succeeded, want 10", okAfter)
	}
	for _, s := range tenant {
		if !s.ok {
			t.Logf("failed: request begun %s from the kill: %v", s.at.Sub(down).Round(time.Millisecond), s.err)
		}
	}
	t.Logf("restart took %s; longest tenant outage %s; %d tenant requests; %d intruder probes, none through",
		up.Sub(down).Round(time.Millisecond), longest.Round(time.Millisecond), len(tenant), probes)
}

// mountBPFFS mounts a bpffs of the test's own at dir/bpffs, for the
// daemon's pin_dir, and lazily unmounts it when the test ends.
func mountBPFFS(t *testing.T, dir string) string {
	t.Helper()
	pinDir := filepath.Join(dir, "bpffs")
	if err := os.MkdirAll(pinDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "bpf", "bpf", pinDir).CombinedOutput(); err != nil {
		t.Fatalf("mount bpffs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", pinDir).Run() })
	return pinDir
}
