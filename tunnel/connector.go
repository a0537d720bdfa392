package tunnel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

// Backoff bounds of a connector's reconnects.
const (
	backoffBase = 500 * time.Millisecond
	backoffCap  = 30 * time.Second
	// stableAfter is how long a tunnel must stay up for the next failure
	// to start the backoff from the beginning again.
	stableAfter = 30 * time.Second
	// headerTimeout bounds the wait for a stream's header.
	headerTimeout = 10 * time.Second
)

// ConnectorConfig configures a Connector.
type ConnectorConfig struct {
	Logger *slog.Logger
	// Tenant is the only tenant whose streams the connector serves.
	Tenant string
	// Gateways are the tunnel ports, host:port; tunnel i dials
	// Gateways[i % len(Gateways)].
	Gateways []string
	// TLS is the client configuration: the pinned gateway CA as RootCAs
	// and the connector's certificate. The connector requires TLS 1.3,
	// the tunnel ALPN and sets ServerName to each gateway's host.
	TLS     *tls.Config
	Tunnels int
	// Proxy, when not nil, is the HTTP proxy the tunnels leave through.
	Proxy            *HTTPProxy
	Keepalive        time.Duration
	KeepaliveTimeout time.Duration
	DialTimeout      time.Duration // zero: 10s
	// Check refuses a stream before it is served (an unknown listener),
	// with the reason the gateway hears. Nil accepts every header of the
	// connector's tenant.
	Check func(*Header) error
	// Serve serves one stream until the session ends; it owns conn. A
	// Serve that returns before it read or wrote conn refuses the
	// stream: the gateway hears the Reason of a *RefusedError in its
	// error, or a generic one.
	Serve func(conn *Conn) error
}

// Connector keeps its tunnels to the gateways up and serves their streams.
type Connector struct {
	cfg  ConnectorConfig
	log  *slog.Logger
	m    *metrics
	stop chan struct{} // closed when the tunnels may close
	once sync.Once

	tls atomic.Pointer[tls.Config] // the credentials new tunnels present and pin

	mu       sync.Mutex
	sessions map[*yamux.Session]connTunnel
	streams  int
	loops    sync.WaitGroup
}

// connTunnel is one of the connector's tunnels up.
type connTunnel struct {
	gw string
	tc *tls.Conn
}

// NewConnector checks cfg.
func NewConnector(cfg ConnectorConfig) (*Connector, error) {
	switch {
	case cfg.Serve == nil:
		return nil, errors.New("tunnel connector: Serve is required")
	case checkTLS(cfg.TLS) != nil:
		return nil, checkTLS(cfg.TLS)
	case len(cfg.Gateways) == 0 || cfg.Tunnels < 1:
		return nil, errors.New("tunnel connector: gateways and at least one tunnel are required")
	case cfg.Tenant == "":
		return nil, errors.New("tunnel connector: tenant is required")
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	c := &Connector{cfg: cfg, log: cfg.Logger.With("component", "tunnel"), m: newMetrics("connector", []string{cfg.Tenant}),
		stop: make(chan struct{}), sessions: map[*yamux.Session]connTunnel{}}
	c.tls.Store(cfg.TLS)
	for _, gw := range cfg.Gateways {
		c.m.up.WithLabelValues("connector", gw)
		c.m.reconnects.WithLabelValues(gw)
	}
	return c, nil
}

// Run keeps the tunnels up until ctx ends. Open streams then run on until
// Shutdown or Close lets the tunnels go.
func (c *Connector) Run(ctx context.Context) error {
	for i := range c.cfg.Tunnels {
		gw := c.cfg.Gateways[i%len(c.cfg.Gateways)]
		c.loops.Add(1)
		go func() {
			defer c.loops.Done()
			c.keep(ctx, i, gw)
		}()
	}
	c.loops.Wait()
	return nil
}

// keep is one tunnel's life: dial, serve, and after a loss dial again
// with exponential backoff and jitter.
func (c *Connector) keep(ctx context.Context, i int, gw string) {
	attempt := 0
	for {
		start := time.Now()
		err := c.tunnel(ctx, i, gw)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > stableAfter {
			attempt = 0
		}
		d := backoff(attempt)
		attempt++
		c.m.reconnect(gw)
		c.log.Warn("tunnel lost or not up, dialling again", "gateway", gw, "tunnel", i, "err", err, "retry_in", d.Round(time.Millisecond))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// backoff is the wait before reconnect attempt n: exponential from
// backoffBase to backoffCap, half of it random, so that connectors that
// lost a gateway together do not come back together.
func backoff(n int) time.Duration {
	d := backoffCap
	if n < 16 {
		d = min(backoffBase<<n, backoffCap)
	}
	return d/2 + rand.N(d/2+1)
}

// tunnel dials one tunnel and serves it until it is lost or ctx ends; on
// ctx's end it stops taking streams and waits for stop before closing.
func (c *Connector) tunnel(ctx context.Context, i int, gw string) error {
	host, _, err := net.SplitHostPort(gw)
	if err != nil {
		return err
	}
	dctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	nc, err := dialVia(dctx, c.cfg.Proxy, gw)
	if err != nil {
		return err
	}
	tcfg := c.tls.Load().Clone()
	tcfg.MinVersion = tls.VersionTLS13
	tcfg.NextProtos = []string{ALPN}
	tcfg.ServerName = host
	tc := tls.Client(nc, tcfg)
	if err := tc.HandshakeContext(dctx); err != nil {
		nc.Close()
		return fmt.Errorf("tls handshake with %s: %w", gw, err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != ALPN {
		nc.Close()
		return fmt.Errorf("%s is no tunnel port (ALPN %q)", gw, p)
	}
	sess, err := muxClient(tc, yamuxConfig(c.cfg.Keepalive, c.cfg.KeepaliveTimeout, c.log))
	if err != nil {
		nc.Close()
		return err
	}
	c.mu.Lock()
	c.sessions[sess] = connTunnel{gw: gw, tc: tc}
	c.mu.Unlock()
	c.m.tunnelUp(gw, 1)
	c.log.Info("tunnel up", "gateway", gw, "tunnel", i, "remote", nc.RemoteAddr().String())
	defer func() {
		c.mu.Lock()
		delete(c.sessions, sess)
		c.mu.Unlock()
		c.m.tunnelUp(gw, -1)
	}()

	go func() {
		select {
		case <-ctx.Done():
			// Stop taking streams; Shutdown or Close says when to go.
			_ = sess.GoAway()
			<-c.stop
			sess.Close()
		case <-sess.CloseChan():
		}
	}()
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			sess.Close()
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("tunnel to %s: %w", gw, err)
		}
		go c.handle(st)
	}
}

// handle checks one stream's header and serves it.
func (c *Connector) handle(st *yamux.Stream) {
	_ = st.SetReadDeadline(time.Now().Add(headerTimeout))
	h, err := ReadHeader(st)
	_ = st.SetReadDeadline(time.Time{})
	tenant := c.cfg.Tenant
	refuse := func(reason string, err error) {
		c.m.stream(tenant, "refused")
		c.log.Warn("stream refused", "reason", reason, "err", err)
		_ = writeStatus(st, StatusRefused, reason)
		st.Close()
	}
	if err != nil {
		refuse("bad stream header", err)
		return
	}
	if h.Tenant != c.cfg.Tenant {
		// Only a gateway could send this: it is authenticated and pinned,
		// so this is a gateway's error or compromise. Refuse and say so.
		refuse("the stream names tenant "+h.Tenant+", not this connector's", fmt.Errorf("tenant %q, connector serves %q", h.Tenant, c.cfg.Tenant))
		return
	}
	certs, err := h.Certificates()
	if err != nil {
		refuse("bad client certificate chain", err)
		return
	}
	if c.cfg.Check != nil {
		if err := c.cfg.Check(h); err != nil {
			refuse(err.Error(), err)
			return
		}
	}
	c.mu.Lock()
	c.streams++
	c.mu.Unlock()
	c.m.active(tenant, 1)
	conn := &Conn{st: st, header: h, certs: certs, tenant: tenant, m: c.m,
		toBackend: c.m.byteCounter(tenant, "to_backend"), toGateway: c.m.byteCounter(tenant, "to_gateway"),
		onOK: func() { c.m.stream(tenant, "served") },
		done: func() {
			c.mu.Lock()
			c.streams--
			c.mu.Unlock()
			c.m.active(tenant, -1)
		}}
	err = c.cfg.Serve(conn)
	reason, busy := refusalReason(err)
	if conn.refuse(reason, busy) {
		// Serve refused the session before its first byte (its proxy
		// judged the client's certificate, or its limits): the gateway
		// answers the client in its protocol, or, for lack of room, tries
		// another connector first.
		c.m.stream(tenant, "refused")
		c.log.Warn("stream refused", "reason", reason, "busy", busy, "listener", h.Listener, "tenant", h.Tenant,
			"source", h.Source.String(), "err", err)
	} else if err != nil {
		c.log.Debug("stream ended", "listener", h.Listener, "source", h.Source.String(), "err", err)
	}
	conn.end()
}

// Up returns how many tunnels are up to each gateway.
func (c *Connector) Up() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int{}
	for _, t := range c.sessions {
		out[t.gw]++
	}
	return out
}

func checkTLS(t *tls.Config) error {
	switch {
	case t == nil:
		return errors.New("tunnel connector: TLS is required")
	case t.RootCAs == nil:
		return errors.New("tunnel connector: the gateway CA must be pinned (RootCAs)")
	case len(t.Certificates) == 0 && t.GetClientCertificate == nil:
		return errors.New("tunnel connector: no certificate to present")
	}
	return nil
}

// SetTLS replaces the connector's credentials (its certificate, the
// pinned gateway CA): the tunnels dialled from now on present and pin
// the new ones. A tunnel up whose gateway certificate the new CA no
// longer verifies is closed, and dialled again under the new trust; the
// others stay, with their streams. It returns how many it closed.
func (c *Connector) SetTLS(t *tls.Config) (int, error) {
	if err := checkTLS(t); err != nil {
		return 0, err
	}
	c.tls.Store(t)
	c.mu.Lock()
	var drop []*yamux.Session
	for s, tu := range c.sessions {
		if err := verifyGateway(tu, t.RootCAs); err != nil {
			c.log.Warn("tunnel closed: the gateway's certificate does not verify under the new gateway CA", "gateway", tu.gw, "err", err)
			drop = append(drop, s)
		}
	}
	c.mu.Unlock()
	for _, s := range drop {
		s.Close()
	}
	return len(drop), nil
}

// verifyGateway checks a tunnel's gateway certificate against roots, as
// the handshake did.
func verifyGateway(tu connTunnel, roots *x509.CertPool) error {
	cs := tu.tc.ConnectionState()
	if len(cs.PeerCertificates) == 0 {
		return errors.New("no gateway certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	host, _, _ := net.SplitHostPort(tu.gw)
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: host})
	return err
}

// Shutdown waits, once Run's context ended, for the open streams to end
// (those accepted before the GoAway and not yet answered too) or ctx to
// be done, then closes the tunnels.
func (c *Connector) Shutdown(ctx context.Context) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var err error
	for {
		c.mu.Lock()
		// Streams being served, and those the multiplexer took but the
		// connector has not answered yet (in the accept backlog, or
		// their header on the way): closing under them would lose a
		// session the gateway cannot send elsewhere.
		open := c.streams
		for s := range c.sessions {
			open += s.NumStreams()
		}
		c.mu.Unlock()
		if open == 0 {
			break
		}
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-tick.C:
			continue
		}
		break
	}
	c.once.Do(func() { close(c.stop) })
	return err
}

// Close closes every tunnel at once.
func (c *Connector) Close() error {
	c.once.Do(func() { close(c.stop) })
	c.mu.Lock()
	for s := range c.sessions {
		s.Close()
	}
	c.mu.Unlock()
	return nil
}
