package tunnel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
	"github.com/gatehouse-dmz/gatehouse/internal/testkit"
)

// rig is a gateway and its trust: one connector CA per tenant, a client
// CA for the tenants' clients, and the gateway's own server certificate.
type rig struct {
	t        testing.TB
	gwCA     *certstest.CA
	connCA   map[string]*certstest.CA
	clientCA *certstest.CA
	revoked  sync.Map // fingerprint → true
	gw       *Gateway
	log      *testkit.LogBuffer
}

func newRig(t testing.TB, mod func(*GatewayConfig)) *rig {
	t.Helper()
	r := &rig{t: t, gwCA: certstest.NewCA(t, "gateway-ca"), clientCA: certstest.NewCA(t, "clients"),
		connCA: map[string]*certstest.CA{"acme": certstest.NewCA(t, "acme-connectors"), "globex": certstest.NewCA(t, "globex-connectors")},
		log:    &testkit.LogBuffer{}}
	srv := r.gwCA.Server(t, "gw.test", "127.0.0.1")
	cfg := GatewayConfig{
		Logger: slog.New(slog.NewTextHandler(r.log, &slog.HandlerOptions{Level: slog.LevelDebug})), Listen: "127.0.0.1:0",
		TLS:      &tls.Config{Certificates: []tls.Certificate{srv.TLS}, ClientAuth: tls.RequireAnyClientCert},
		Identify: r.identify, Tenants: []string{"acme", "globex"},
		StreamsPerTunnel: 100, StreamsPerTenant: 100, Keepalive: time.Second, KeepaliveTimeout: time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	gw, err := NewGateway(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.gw = gw
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); gw.Run(ctx) }()
	t.Cleanup(func() { cancel(); gw.Close(); <-done })
	return r
}

// identify maps a connector certificate to the tenant whose connector CA
// issued it, as the daemon's certs.Manager does with gateway.connectors.
func (r *rig) identify(cs tls.ConnectionState) (string, error) {
	if len(cs.PeerCertificates) == 0 {
		return "", errors.New("no certificate")
	}
	leaf := cs.PeerCertificates[0]
	if _, ok := r.revoked.Load(string(leaf.Raw)); ok {
		return "", errors.New("revoked")
	}
	for tenant, ca := range r.connCA {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
			return tenant, nil
		}
	}
	return "", errors.New("no connector CA")
}

// served is what a connector's Serve saw.
type served struct {
	mu      sync.Mutex
	headers []*Header
	states  []tls.ConnectionState
}

// connector starts a connector for tenant with a certificate of certCA,
// whose Serve echoes each stream upper-cased.
func (r *rig) connector(tenant string, certCA *certstest.CA, tunnels int, mod func(*ConnectorConfig)) (*Connector, *served) {
	r.t.Helper()
	leaf := certCA.Client(r.t, tenant+"-connector")
	s := &served{}
	cfg := ConnectorConfig{
		Logger: slog.New(slog.NewTextHandler(r.log, &slog.HandlerOptions{Level: slog.LevelDebug})), Tenant: tenant, Gateways: []string{r.gw.Addr().String()},
		TLS:     &tls.Config{RootCAs: r.gwCA.Pool(), Certificates: []tls.Certificate{leaf.TLS}},
		Tunnels: tunnels, Keepalive: time.Second, KeepaliveTimeout: time.Second,
		Serve: func(c *Conn) error {
			s.mu.Lock()
			s.headers = append(s.headers, c.Header())
			s.states = append(s.states, c.ConnectionState())
			s.mu.Unlock()
			b, err := io.ReadAll(c)
			if err != nil {
				return err
			}
			_, err = c.Write([]byte(strings.ToUpper(string(b))))
			return err
		},
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := NewConnector(cfg)
	if err != nil {
		r.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	r.t.Cleanup(func() { cancel(); c.Close(); <-done })
	return c, s
}

// header is a client of tenant as the gateway's listener proved it.
func (r *rig) header(tenant string) *Header {
	leaf := r.clientCA.Client(r.t, tenant+"-client", "spiffe://"+tenant+"/cloud")
	return &Header{Tenant: tenant, FingerprintSHA256: strings.Repeat("ab", 32), Source: netip.MustParseAddrPort("203.0.113.9:40000"),
		Listener: "web", Protocol: "https", ServerName: tenant + ".example", ALPN: "http/1.1", Chain: [][]byte{leaf.Cert.Raw}}
}

// waitTunnels waits until tenant has n tunnels up on the gateway.
func (r *rig) waitTunnels(tenant string, n int) {
	r.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for r.gw.Tunnels()[tenant] != n {
		if time.Now().After(deadline) {
			r.t.Fatalf("tenant %s: %d tunnels up, want %d\n%s", tenant, r.gw.Tunnels()[tenant], n, r.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// roundTrip sends msg down a stream for h and returns the answer.
func (r *rig) roundTrip(h *Header, msg string) (string, error) {
	st, err := r.gw.Open(h)
	if err != nil {
		return "", err
	}
	defer st.Close()
	if _, err := st.Write([]byte(msg)); err != nil {
		return "", err
	}
	st.CloseWrite()
	b, err := io.ReadAll(st)
	return string(b), err
}

func testutilCounter(c prometheus.Counter) float64 { return testutil.ToFloat64(c) }
