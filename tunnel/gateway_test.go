package tunnel

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// TestStreamCarriesClient: a stream reaches the tenant's connector with
// the original client's identity and certificate, bytes intact both ways,
// with half-close.
func TestStreamCarriesClient(t *testing.T) {
	r := newRig(t, nil)
	_, s := r.connector("acme", r.connCA["acme"], 2, nil)
	r.waitTunnels("acme", 2)
	h := r.header("acme")
	msg := strings.Repeat("bulk payload ", 100000) // 1.3 MB: several windows
	got, err := r.roundTrip(h, msg)
	if err != nil {
		t.Fatal(err)
	}
	if got != strings.ToUpper(msg) {
		t.Fatalf("answer of %d bytes, want %d", len(got), len(msg))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.headers) != 1 {
		t.Fatalf("connector served %d streams, want 1", len(s.headers))
	}
	sh, cs := s.headers[0], s.states[0]
	if sh.Tenant != "acme" || sh.Source != h.Source || sh.Listener != "web" || sh.FingerprintSHA256 != h.FingerprintSHA256 {
		t.Errorf("header at the connector %+v, want %+v", sh, h)
	}
	if !cs.HandshakeComplete || len(cs.PeerCertificates) != 1 || cs.PeerCertificates[0].Subject.CommonName != "acme-client" ||
		cs.ServerName != "acme.example" || cs.NegotiatedProtocol != "http/1.1" {
		t.Errorf("connection state at the connector: %+v", cs)
	}
}

// TestTenantIsolation: a stream goes to its tenant's connector only; a
// tenant without a connector gets ErrNoTunnel, never another's tunnel.
func TestTenantIsolation(t *testing.T) {
	r := newRig(t, nil)
	_, acme := r.connector("acme", r.connCA["acme"], 2, nil)
	r.waitTunnels("acme", 2)
	for range 10 {
		if _, err := r.roundTrip(r.header("acme"), "x"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.roundTrip(r.header("globex"), "x"); !errors.Is(err, ErrNoTunnel) {
		t.Fatalf("globex without a connector: %v, want ErrNoTunnel", err)
	}
	_, globex := r.connector("globex", r.connCA["globex"], 1, nil)
	r.waitTunnels("globex", 1)
	for range 10 {
		if _, err := r.roundTrip(r.header("globex"), "y"); err != nil {
			t.Fatal(err)
		}
	}
	for name, s := range map[string]*served{"acme": acme, "globex": globex} {
		s.mu.Lock()
		if len(s.headers) != 10 {
			t.Errorf("%s's connector served %d streams, want 10", name, len(s.headers))
		}
		for _, h := range s.headers {
			if h.Tenant != name {
				t.Errorf("%s's connector got a stream of %s", name, h.Tenant)
			}
		}
		s.mu.Unlock()
	}
}

// TestConnectorCertOfAnotherTenant: a connector holding globex's connector
// certificate that claims to be acme's gets a tunnel bound to globex, so
// acme's sessions never reach it; and when the gateway sends it globex's,
// it refuses them, since it serves acme. A certificate of no connector CA
// gets no tunnel at all.
func TestConnectorCertOfAnotherTenant(t *testing.T) {
	r := newRig(t, nil)
	_, s := r.connector("acme", r.connCA["globex"], 1, nil)
	r.waitTunnels("globex", 1)
	if _, err := r.roundTrip(r.header("acme"), "x"); !errors.Is(err, ErrNoTunnel) {
		t.Fatalf("acme's session: %v, want ErrNoTunnel (the tunnel is globex's)", err)
	}
	_, err := r.roundTrip(r.header("globex"), "x")
	var refused *RefusedError
	if !errors.As(err, &refused) || !strings.Contains(refused.Reason, "names tenant globex") {
		t.Fatalf("globex's session on a connector serving acme: %v, want a refusal", err)
	}
	s.mu.Lock()
	if len(s.headers) != 0 {
		t.Errorf("the connector served %d streams", len(s.headers))
	}
	s.mu.Unlock()

	r.connector("acme", r.clientCA, 1, nil) // a tenant client's certificate
	deadline := time.Now().Add(10 * time.Second)
	for r.log.Occurrences("tunnel refused") == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no refusal logged:\n%s", r.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := r.gw.Tunnels()["acme"]; n != 0 {
		t.Fatalf("acme has %d tunnels from a client certificate", n)
	}
}

// TestStreamLimits: per tunnel and per tenant; a closed stream gives its
// slot back.
func TestStreamLimits(t *testing.T) {
	r := newRig(t, func(c *GatewayConfig) { c.StreamsPerTunnel = 1; c.StreamsPerTenant = 2 })
	r.connector("acme", r.connCA["acme"], 1, func(c *ConnectorConfig) {
		c.Serve = func(c *Conn) error { _, err := io.Copy(io.Discard, c); return err }
	})
	r.waitTunnels("acme", 1)
	a, err := r.gw.Open(r.header("acme"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.gw.Open(r.header("acme")); !errors.Is(err, ErrTunnelsFull) {
		t.Fatalf("second stream on a one-stream tunnel: %v, want ErrTunnelsFull", err)
	}
	r.connector("acme", r.connCA["acme"], 1, func(c *ConnectorConfig) {
		c.Serve = func(c *Conn) error { _, err := io.Copy(io.Discard, c); return err }
	})
	r.waitTunnels("acme", 2)
	b, err := r.gw.Open(r.header("acme"))
	if err != nil {
		t.Fatalf("a stream on the second tunnel: %v", err)
	}
	if _, err := r.gw.Open(r.header("acme")); !errors.Is(err, ErrTenantLimit) {
		t.Fatalf("third stream of a two-stream tenant: %v, want ErrTenantLimit", err)
	}
	a.Close()
	c, err := r.gw.Open(r.header("acme"))
	if err != nil {
		t.Fatalf("after a close: %v", err)
	}
	b.Close()
	c.Close()
}

// TestRevalidateClosesTunnel: a connector certificate that stops checking
// out (revoked) loses its tunnels, and the tenant's sessions get
// ErrNoTunnel; the connector's redial is refused too.
func TestRevalidateClosesTunnel(t *testing.T) {
	r := newRig(t, nil)
	leaf := r.connCA["acme"].Client(t, "acme-connector")
	r.connector("acme", r.connCA["acme"], 2, func(c *ConnectorConfig) {
		c.TLS.Certificates[0] = leaf.TLS
	})
	r.waitTunnels("acme", 2)
	r.revoked.Store(string(leaf.Cert.Raw), true)
	if n := r.gw.Revalidate(); n != 2 {
		t.Fatalf("Revalidate closed %d tunnels, want 2", n)
	}
	r.waitTunnels("acme", 0)
	if _, err := r.roundTrip(r.header("acme"), "x"); !errors.Is(err, ErrNoTunnel) {
		t.Fatalf("after revocation: %v, want ErrNoTunnel", err)
	}
}

// TestFlowControlPerStream: a stream whose reader stalls fills its own
// window; another stream on the same single tunnel still answers.
func TestFlowControlPerStream(t *testing.T) {
	r := newRig(t, nil)
	stall := make(chan struct{})
	defer close(stall)
	r.connector("acme", r.connCA["acme"], 1, func(c *ConnectorConfig) {
		serve := c.Serve
		c.Serve = func(conn *Conn) error {
			if conn.Header().Listener == "bulk" {
				<-stall // reads nothing: the gateway's writes fill the window
				return nil
			}
			return serve(conn)
		}
	})
	r.waitTunnels("acme", 1)
	h := r.header("acme")
	h.Listener = "bulk"
	bulk, err := r.gw.Open(h)
	if err != nil {
		t.Fatal(err)
	}
	defer bulk.Close()
	wrote := make(chan int64, 1)
	go func() {
		_ = bulk.SetWriteDeadline(time.Now().Add(30 * time.Second))
		n, _ := bulk.Write(make([]byte, 8<<20))
		wrote <- int64(n)
	}()
	for i := range 5 {
		got, err := r.roundTrip(r.header("acme"), "terminal")
		if err != nil || got != "TERMINAL" {
			t.Fatalf("interactive stream %d beside a stalled bulk stream: %q, %v", i, got, err)
		}
	}
	select {
	case n := <-wrote:
		t.Fatalf("the bulk write of 8 MiB finished (%d bytes) though nothing read it", n)
	default:
	}
}

// TestDeadTunnelDetected: a tunnel whose path goes silent (no FIN, no
// RST) is found by keepalive and leaves the pool, and sessions go to the
// tunnel that is left.
func TestDeadTunnelDetected(t *testing.T) {
	r := newRig(t, nil)
	bh := newBlackhole(t, r.gw.Addr().String())
	r.connector("acme", r.connCA["acme"], 1, func(c *ConnectorConfig) { c.Gateways = []string{bh.addr()} })
	r.connector("acme", r.connCA["acme"], 1, nil)
	r.waitTunnels("acme", 2)
	bh.silence()
	start := time.Now()
	r.waitTunnels("acme", 1)
	t.Logf("dead tunnel left the pool after %s (keepalive 1s, timeout 1s)", time.Since(start).Round(time.Millisecond))
	for range 5 {
		if got, err := r.roundTrip(r.header("acme"), "x"); err != nil || got != "X" {
			t.Fatalf("after the loss: %q, %v", got, err)
		}
	}
}

func TestBackoff(t *testing.T) {
	for n := range 40 {
		d := backoff(n)
		want := backoffCap
		if n < 16 {
			want = min(backoffBase<<n, backoffCap)
		}
		if d < want/2 || d > want {
			t.Fatalf("backoff(%d) = %s, want %s..%s", n, d, want/2, want)
		}
	}
}

// TestHandshakeSlotsPerSource: one host holding unfinished handshakes
// cannot keep a connector elsewhere out; its ninth is closed at once.
func TestHandshakeSlotsPerSource(t *testing.T) {
	r := newRig(t, func(c *GatewayConfig) { c.HandshakeTimeout = time.Minute })
	hog := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range maxPendingPerSource {
		c, err := hog.Dial("tcp", r.gw.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	extra, err := hog.Dial("tcp", r.gw.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	_ = extra.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := extra.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("a handshake over the source's slots: %v, want the gateway to close it", err)
	}
	r.connector("acme", r.connCA["acme"], 1, nil) // from 127.0.0.1
	r.waitTunnels("acme", 1)
}

// TestTunnelsSpreadOverGateways: a connector's tunnels go round its
// gateways; when one gateway goes away, the other keeps serving, and the
// connector keeps dialling the lost one (each of its two tunnels there
// fails a second time: it dialled again).
func TestTunnelsSpreadOverGateways(t *testing.T) {
	r1 := newRig(t, nil)
	// A second gateway of the same trust, its own port.
	cfg := r1.gw.cfg
	cfg.Listen = "127.0.0.1:0"
	gw2, err := NewGateway(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); gw2.Run(ctx) }()
	defer func() { cancel(); gw2.Close(); <-done }()
	r2 := &rig{t: t, gwCA: r1.gwCA, connCA: r1.connCA, clientCA: r1.clientCA, gw: gw2, log: r1.log}

	c, _ := r1.connector("acme", r1.connCA["acme"], 4, func(c *ConnectorConfig) {
		c.Gateways = []string{r1.gw.Addr().String(), gw2.Addr().String()}
	})
	r1.waitTunnels("acme", 2)
	r2.waitTunnels("acme", 2)

	r1.gw.Close() // the first gateway is gone
	deadline := time.Now().Add(10 * time.Second)
	for c.Up()[r1.gw.Addr().String()] != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the connector still counts tunnels to a closed gateway: %v", c.Up())
		}
		time.Sleep(20 * time.Millisecond)
	}
	for range 5 {
		if got, err := r2.roundTrip(r2.header("acme"), "x"); err != nil || got != "X" {
			t.Fatalf("through the remaining gateway: %q, %v", got, err)
		}
	}
	if up := c.Up()[gw2.Addr().String()]; up != 2 {
		t.Errorf("tunnels to the remaining gateway: %d, want 2", up)
	}
	deadline = time.Now().Add(10 * time.Second)
	for testutilCounter(c.m.reconnects.WithLabelValues(r1.gw.Addr().String())) < 4 {
		if time.Now().After(deadline) {
			t.Fatal("the connector does not dial the lost gateway again")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestCloseEndsPendingHandshakes: Close does not wait out the handshake
// timeout of a connection that never speaks; it closes it.
func TestCloseEndsPendingHandshakes(t *testing.T) {
	r := newRig(t, func(c *GatewayConfig) { c.HandshakeTimeout = time.Hour })
	c, err := net.Dial("tcp", r.gw.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The accept loop takes connections in turn: once a connector's
	// tunnel, dialled after it, is up, this one is in its handshake.
	r.connector("acme", r.connCA["acme"], 1, nil)
	r.waitTunnels("acme", 1)
	closed := make(chan error, 1)
	go func() { closed <- r.gw.Close() }()
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("a silent connection after Close: %v, want closed by the gateway", err)
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
}
