package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// Errors of Gateway.Open; the daemon answers each in the client's protocol.
var (
	ErrNoTunnel    = errors.New("no connector tunnel is up for the tenant")
	ErrTenantLimit = errors.New("the tenant has gateway.streams_per_tenant streams open")
	ErrTunnelsFull = errors.New("every tunnel of the tenant has gateway.streams_per_tunnel streams open")
	ErrClosed      = errors.New("tunnel gateway closed")
)

// ALPN is the protocol both ends name in the TLS handshake, so that a
// tunnel port never mistakes an HTTPS client for a connector or back.
const ALPN = "gatehouse-tunnel/1"

// Bounds of the tunnel port: handshakes under way at once, of them from
// one source address (so that one host cannot keep connectors out by
// holding every slot), and tunnels of one tenant (so that a stolen
// connector certificate cannot pile up tunnels).
const (
	maxPendingHandshakes = 64
	maxPendingPerSource  = 8
	maxTunnelsPerTenant  = 256
)

// GatewayConfig configures a Gateway.
type GatewayConfig struct {
	Logger *slog.Logger
	// Listen is the tunnel port's address.
	Listen string
	// TLS is the tunnel port's server configuration; it must ask for a
	// client certificate. The gateway requires TLS 1.3 and ALPN on top.
	TLS *tls.Config
	// Identify says which tenant a connector's certificate proves, as
	// Header.Binding names it (tenant/environment for a connector of one
	// environment of a tenant that has several); it is
	// called after every handshake and again by Revalidate.
	Identify func(cs tls.ConnectionState) (tenant string, err error)
	// Tenants are the tenants that may have connectors (metric labels).
	Tenants          []string
	StreamsPerTunnel int
	StreamsPerTenant int
	Keepalive        time.Duration
	KeepaliveTimeout time.Duration
	HandshakeTimeout time.Duration // zero: 10s
}

// Gateway accepts connector tunnels and opens streams on them.
type Gateway struct {
	cfg     GatewayConfig
	log     *slog.Logger
	tls     *tls.Config
	ln      net.Listener
	m       *metrics
	pending chan struct{}

	mu      sync.Mutex
	pendSrc map[netip.Addr]int    // unfinished handshakes per source
	pendC   map[net.Conn]struct{} // and their connections, which Close ends
	pools   map[string]*pool
	closed  bool
	nextID  uint64
	wg      sync.WaitGroup // tunnel goroutines
}

// pool is one tenant's tunnels.
type pool struct {
	tunnels []*gwTunnel
	streams int
}

// gwTunnel is one connector's tunnel, bound to one tenant for its life.
type gwTunnel struct {
	id       uint64
	tenant   string
	remote   string
	fp       string // the connector certificate's fingerprint: which connector
	tc       *tls.Conn
	sess     *yamux.Session
	streams  int // under Gateway.mu
	draining bool
}

// NewGateway checks cfg and binds the tunnel port.
func NewGateway(cfg GatewayConfig) (*Gateway, error) {
	if cfg.TLS == nil || cfg.Identify == nil {
		return nil, errors.New("tunnel gateway: TLS and Identify are required")
	}
	if cfg.TLS.ClientAuth < tls.RequireAnyClientCert {
		return nil, errors.New("tunnel gateway: the TLS config must require a client certificate")
	}
	if cfg.StreamsPerTunnel < 1 || cfg.StreamsPerTenant < 1 {
		return nil, errors.New("tunnel gateway: stream limits must be at least 1")
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	tc := cfg.TLS.Clone()
	tc.MinVersion = tls.VersionTLS13
	tc.NextProtos = []string{ALPN}
	if get := tc.GetConfigForClient; get != nil {
		tc.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			c, err := get(hello)
			if err != nil || c == nil {
				return c, err
			}
			if c.ClientAuth < tls.RequireAnyClientCert {
				return nil, errors.New("tunnel gateway: the TLS config for this client does not require a client certificate")
			}
			c = c.Clone()
			c.MinVersion = tls.VersionTLS13
			c.NextProtos = []string{ALPN}
			return c, nil
		}
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("tunnel port: %w", err)
	}
	g := &Gateway{cfg: cfg, log: cfg.Logger.With("component", "tunnel"), tls: tc, ln: ln,
		m: newMetrics("gateway", cfg.Tenants), pending: make(chan struct{}, maxPendingHandshakes), pools: map[string]*pool{}, pendSrc: map[netip.Addr]int{}, pendC: map[net.Conn]struct{}{}}
	return g, nil
}

// Addr is the tunnel port's bound address.
func (g *Gateway) Addr() net.Addr { return g.ln.Addr() }

// Run accepts tunnels until ctx ends or the gateway is closed.
func (g *Gateway) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { g.ln.Close() })
	defer stop()
	var delay time.Duration
	for {
		nc, err := g.ln.Accept()
		if err != nil {
			if ctx.Err() != nil || g.isClosed() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// EMFILE and the like: back off as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			g.log.Warn("tunnel accept failed", "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		src := addrOf(nc.RemoteAddr())
		if !g.admitHandshake(nc, src) {
			g.m.handshake("busy")
			nc.Close()
			continue
		}
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			g.serve(nc, src)
		}()
	}
}

func (g *Gateway) isClosed() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.closed
}

// admitHandshake takes a slot for a handshake from src, if the port and
// the source have one free.
func (g *Gateway) admitHandshake(nc net.Conn, src netip.Addr) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed || g.pendSrc[src] >= maxPendingPerSource {
		return false
	}
	select {
	case g.pending <- struct{}{}:
	default:
		return false
	}
	g.pendSrc[src]++
	g.pendC[nc] = struct{}{}
	return true
}

func (g *Gateway) handshakeDone(nc net.Conn, src netip.Addr) {
	g.mu.Lock()
	defer g.mu.Unlock()
	<-g.pending
	delete(g.pendC, nc)
	if g.pendSrc[src]--; g.pendSrc[src] <= 0 {
		delete(g.pendSrc, src)
	}
}

func addrOf(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// serve runs one tunnel from handshake to close.
func (g *Gateway) serve(nc net.Conn, src netip.Addr) {
	remote := nc.RemoteAddr().String()
	tc := tls.Server(nc, g.tls)
	_ = nc.SetDeadline(time.Now().Add(g.cfg.HandshakeTimeout))
	err := tc.Handshake()
	g.handshakeDone(nc, src)
	if err != nil {
		g.m.handshake("tls")
		g.log.Info("tunnel handshake refused", "remote", remote, "err", err)
		nc.Close()
		return
	}
	cs := tc.ConnectionState()
	tenant, err := g.cfg.Identify(cs)
	if err == nil && cs.NegotiatedProtocol != ALPN {
		err = fmt.Errorf("ALPN %q, want %q", cs.NegotiatedProtocol, ALPN)
	}
	if err != nil {
		g.m.handshake("refused")
		g.log.Warn("tunnel refused: the connector certificate proves no tenant's connector", "remote", remote, "err", err)
		nc.Close()
		return
	}
	_ = nc.SetDeadline(time.Time{})
	sess, err := muxServer(tc, yamuxConfig(g.cfg.Keepalive, g.cfg.KeepaliveTimeout, g.log))
	if err != nil {
		nc.Close()
		return
	}
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		sess.Close()
		return
	}
	g.nextID++
	t := &gwTunnel{id: g.nextID, tenant: tenant, remote: remote, fp: fingerprint(cs), tc: tc, sess: sess}
	p := g.pools[tenant]
	if p == nil {
		p = &pool{}
		g.pools[tenant] = p
	}
	if len(p.tunnels) >= maxTunnelsPerTenant {
		g.mu.Unlock()
		g.m.handshake("limit")
		g.log.Warn("tunnel refused: the tenant has the most tunnels a gateway keeps", "tenant", tenant, "remote", remote, "max", maxTunnelsPerTenant)
		sess.Close()
		return
	}
	p.tunnels = append(p.tunnels, t)
	g.mu.Unlock()
	g.m.handshake("ok")
	g.m.tunnelUp(tenant, 1)
	g.log.Info("tunnel up", "tenant", tenant, "tunnel", t.id, "remote", remote, "fingerprint", fingerprint(cs))

	// The gateway opens every stream; one the connector opens is reset.
	go func() {
		for {
			st, err := sess.AcceptStream()
			if err != nil {
				return
			}
			g.log.Warn("stream opened by a connector closed: only the gateway opens streams", "tenant", tenant, "tunnel", t.id)
			st.Close()
		}
	}()
	<-sess.CloseChan()
	g.remove(t)
	g.m.tunnelUp(tenant, -1)
	g.log.Info("tunnel down", "tenant", tenant, "tunnel", t.id, "remote", remote)
}

// Open opens a stream for h on the least loaded healthy tunnel of its
// tenant and environment (h.Binding) and writes h on it. It never looks
// at another tenant's or environment's pool.
func (g *Gateway) Open(h *Header) (*Stream, error) {
	if err := h.validate(); err != nil {
		return nil, err
	}
	st, t, err := g.open(h, nil)
	if err != nil {
		return nil, err
	}
	return newStream(g, h, st, t), nil
}

// open opens a yamux stream for h on a tunnel of h's tenant and
// environment (h.Binding), not one of the connectors in except
// (certificate fingerprints), counts it on the tunnel, and writes h on it.
func (g *Gateway) open(h *Header, except []string) (*yamux.Stream, *gwTunnel, error) {
	key := h.Binding()
	for attempt := 0; ; attempt++ {
		t, err := g.pick(key, except)
		if err != nil {
			if except == nil {
				g.m.stream(key, resultOf(err))
			}
			return nil, nil, err
		}
		st, err := t.sess.OpenStream()
		if err != nil {
			g.release(t)
			if errors.Is(err, yamux.ErrRemoteGoAway) {
				// The connector is draining: its open streams run on,
				// new ones go elsewhere.
				g.mu.Lock()
				t.draining = true
				g.mu.Unlock()
			} else {
				// The tunnel died under us: take it out, try the next.
				t.sess.Close()
				g.remove(t)
			}
			if attempt < 8 {
				continue
			}
			g.m.stream(key, "error")
			return nil, nil, fmt.Errorf("open stream: %w", err)
		}
		_ = st.SetWriteDeadline(time.Now().Add(g.cfg.KeepaliveTimeout))
		err = WriteHeader(st, h)
		_ = st.SetWriteDeadline(time.Time{})
		if err != nil {
			st.Close()
			g.release(t)
			g.m.stream(key, "error")
			return nil, nil, fmt.Errorf("write stream header: %w", err)
		}
		g.m.stream(key, "opened")
		return st, t, nil
	}
}

// Shutdown stops taking tunnels and streams, waits until the open streams
// end or ctx is done, then closes every tunnel.
func (g *Gateway) Shutdown(ctx context.Context) error {
	g.mu.Lock()
	g.closed = true
	var all []*gwTunnel
	for _, p := range g.pools {
		for _, t := range p.tunnels {
			t.draining = true
			all = append(all, t)
		}
	}
	g.mu.Unlock()
	g.ln.Close()
	for _, t := range all {
		_ = t.sess.GoAway()
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var err error
wait:
	for {
		g.mu.Lock()
		open := 0
		for _, p := range g.pools {
			open += p.streams
		}
		g.mu.Unlock()
		if open == 0 {
			break
		}
		select {
		case <-ctx.Done():
			err = ctx.Err()
			break wait
		case <-tick.C:
		}
	}
	for _, t := range all {
		t.sess.Close()
	}
	return err
}

// Close closes the port, the handshakes under way and every tunnel at
// once, and waits for their goroutines.
func (g *Gateway) Close() error {
	g.mu.Lock()
	g.closed = true
	for nc := range g.pendC {
		nc.Close()
	}
	var all []*gwTunnel
	for _, p := range g.pools {
		all = append(all, p.tunnels...)
	}
	g.mu.Unlock()
	err := g.ln.Close()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	for _, t := range all {
		t.sess.Close()
	}
	g.wg.Wait()
	return err
}

func resultOf(err error) string {
	switch {
	case errors.Is(err, ErrNoTunnel):
		return "no_tunnel"
	case errors.Is(err, ErrTenantLimit):
		return "tenant_limit"
	case errors.Is(err, ErrTunnelsFull):
		return "tunnels_full"
	case errors.Is(err, ErrClosed):
		return "closed"
	}
	return "error"
}
