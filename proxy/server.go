package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dmz/gatehouse/policy"
	httpproxy "github.com/gatehouse-dmz/gatehouse/proxy/http"
	"github.com/gatehouse-dmz/gatehouse/proxy/relay"
	"github.com/gatehouse-dmz/gatehouse/proxy/telnet"
)

// Errors of Server.
var (
	ErrUnsupported = errors.New("protocol not supported yet")
	ErrClosed      = errors.New("proxy server closed")
	ErrConfig      = errors.New("invalid proxy configuration")
	ErrTLSConfig   = errors.New("tls config does not require a verified client certificate")
	ErrConnLimit   = errors.New("tenant at its connection limit")

	errClosedMeanwhile = errors.New("connection closed while it was admitted (revalidation or drain)")
)

// unknownTenant labels bytes of connections that never proved a tenant.
const unknownTenant = "unknown"

// Config configures a Server.
type Config struct {
	Logger *slog.Logger
	TLS    TLSSource
	// AccessLog receives one line per HTTP request; give it a JSON handler.
	// Nil discards.
	AccessLog *slog.Logger
}

// Server owns every listener socket and every client connection.
type Server struct {
	logger *slog.Logger
	tlsSrc TLSSource
	access *slog.Logger

	mu      sync.Mutex // serialises Apply, Shutdown and Close
	sockets map[string]*socket
	closed  bool
	drains  sync.WaitGroup

	connMu     sync.Mutex
	conns      map[*conn]struct{}
	perTen     map[[2]string]int  // identified connections per listener and tenant
	configured map[[2]string]bool // listener and tenant pairs the generation in force routes
	byTLS      sync.Map           // *tls.Conn → *conn, for http.Server.ConnContext
	inFlite    *httpproxy.InFlight

	httpMetrics *httpproxy.Metrics
	sessions    *telnet.Sessions // terminal sessions, shared by every generation

	fds        descriptors
	inReserve  atomic.Bool // the last accept found the process within the descriptor reserve
	reserveLog *logLimiter // "descriptor reserve reached" lines
	acceptLog  *logLimiter // accept errors
	// seriesOf are the listeners whose refusal series exist; Apply only.
	seriesOf []string

	revalidations atomic.Uint64 // Revalidate calls so far; see admit
	refusals      *logLimiter   // "TLS handshake refused" and other lines any client causes
	activeDesc    *prometheus.Desc
	pendingDesc   *prometheus.Desc
	refused       *prometheus.CounterVec
	bytes         *prometheus.CounterVec
}

var _ prometheus.Collector = (*Server)(nil)

// New validates cfg and returns a Server with no listeners; Apply starts them.
func New(cfg Config) (*Server, error) {
	if cfg.TLS == nil {
		return nil, fmt.Errorf("%w: no TLS source", ErrConfig)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	access := cfg.AccessLog
	if access == nil {
		access = slog.New(slog.DiscardHandler)
	}
	return &Server{
		logger:      logger.With("component", "proxy"),
		refusals:    newLogLimiter(10, 50),
		acceptLog:   newLogLimiter(0.5, 1),
		reserveLog:  newLogLimiter(0.1, 1),
		tlsSrc:      cfg.TLS,
		access:      access,
		sockets:     map[string]*socket{},
		conns:       map[*conn]struct{}{},
		perTen:      map[[2]string]int{},
		configured:  map[[2]string]bool{},
		inFlite:     httpproxy.NewInFlight(),
		httpMetrics: httpproxy.NewMetrics(),
		sessions:    telnet.NewSessions(),
		activeDesc: prometheus.NewDesc("gatehouse_proxy_connections_active",
			"Client connections open after a tenant was identified.", []string{"listener", "tenant"}, nil),
		pendingDesc: prometheus.NewDesc("gatehouse_proxy_handshakes_pending",
			"Connections of a listener that have not finished their TLS handshake (limits.pre_handshake caps them).",
			[]string{"listener"}, nil),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_proxy_connections_refused_total",
			Help: "Connections the proxy closed before serving them, by reason: listener_full, descriptors (the descriptor reserve), " +
				"pre_handshake and pre_handshake_source (the oldest unfinished handshake, evicted for a newer one), tenant_limit.",
		}, []string{"listener", "reason"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_proxy_bytes_total",
			Help: "Bytes on the client side of the listeners, TLS records included; direction in is from the client.",
		}, []string{"listener", "tenant", "direction"}),
	}, nil
}

// Describe implements prometheus.Collector.
func (s *Server) Describe(ch chan<- *prometheus.Desc) {
	ch <- s.activeDesc
	ch <- s.pendingDesc
	s.refused.Describe(ch)
	s.bytes.Describe(ch)
	s.httpMetrics.Describe(ch)
	s.sessions.Describe(ch)
}

// Collect implements prometheus.Collector.
func (s *Server) Collect(ch chan<- prometheus.Metric) {
	s.collectConns(ch)
	s.refused.Collect(ch)
	s.bytes.Collect(ch)
	s.httpMetrics.Collect(ch)
	s.sessions.Collect(ch)
}

// socket is one bound address. Its state (which listener it is, TLS
// config, routes) is swapped as a whole by Apply; connections read it when
// they need it, so a reload reaches keep-alive connections at their next
// request.
type socket struct {
	addr   string
	ln     net.Listener
	state  atomic.Pointer[listenerState]
	http   httpServers
	gate   gate
	done   chan struct{} // accept loop and every connection of it ended
	ctx    context.Context
	cancel context.CancelFunc
}

// listenerState is one generation of one listener.
type listenerState struct {
	l      policy.Listener
	source policy.SourcePrefix // how per-source limits count a source
	tls    *tls.Config
	http   *httpproxy.Handler
	tcp    map[string]*tcpRoute
	telnet *telnet.Handler
	routes map[string]string // tcp and telnet: tenant → routeKey, built once
}

func (st *listenerState) start() {
	if st.http != nil {
		st.http.Start()
	}
}

func (st *listenerState) close() {
	if st.http != nil {
		st.http.Close()
	}
}

// hasRoute reports whether tenant still has the route of key here: the
// route of a tcp or telnet session, or of an upgraded HTTP connection.
func (st *listenerState) hasRoute(tenant, key string) bool {
	if st != nil && st.http != nil {
		return st.http.HasRoute(tenant, key)
	}
	return st.routeKey(tenant) == key
}

// routeKey identifies the route a tcp or telnet session of tenant runs on:
// everything of it the session depends on. It is "" for HTTP listeners
// (routed per request) and "-" when the tenant has no route here.
func (st *listenerState) routeKey(tenant string) string {
	if st == nil || st.http != nil {
		return ""
	}
	if k, ok := st.routes[tenant]; ok {
		return k
	}
	return "-"
}

// Apply makes p's listeners the running ones. It builds every listener's
// state and binds every new address first; if anything fails nothing
// changes. Then it swaps all states at once and lets listeners p no longer
// has drain in the background.
func (s *Server) Apply(p *policy.Policy) error {
	if p == nil {
		return fmt.Errorf("%w: nil policy", ErrConfig)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	states := make(map[string]*listenerState, len(p.Listeners))
	fail := func(err error) error {
		for _, st := range states {
			st.close()
		}
		return err
	}
	names := map[string]bool{}
	for _, l := range p.Listeners {
		addr := l.ListenAddress()
		if _, dup := states[addr]; dup {
			return fail(fmt.Errorf("%w: listener %q: address %s used twice", ErrConfig, l.Name, addr))
		}
		if names[l.Name] {
			return fail(fmt.Errorf("%w: listener name %q used twice", ErrConfig, l.Name))
		}
		names[l.Name] = true
		if err := checkLimits(l); err != nil {
			return fail(err)
		}
		st, err := s.buildState(l)
		if err != nil {
			return fail(err)
		}
		st.source = p.Enforcement.SourcePrefix
		states[addr] = st
	}
	var opened []*socket
	for addr := range states {
		if _, ok := s.sockets[addr]; ok {
			continue
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			for _, sk := range opened {
				sk.ln.Close()
			}
			return fail(fmt.Errorf("listen %s for %q: %w", addr, states[addr].l.Name, err))
		}
		opened = append(opened, s.newSocket(addr, ln))
	}
	// Commit: nothing below can fail.
	for _, sk := range opened {
		s.sockets[sk.addr] = sk
	}
	for addr, st := range states {
		sk := s.sockets[addr]
		if old := sk.state.Swap(st); old != nil {
			old.close()
		}
		// After the old generation stopped, so one listener's backends
		// are checked and counted once.
		st.start()
		var set *httpSettings
		if st.http != nil {
			hs := httpSettingsOf(st.l.Limits)
			set = &hs
		}
		s.useHTTP(sk, set)
	}
	for _, sk := range opened {
		s.start(sk)
	}
	s.rearm(states)
	// A tcp or telnet session, or an upgraded HTTP connection, lives on the
	// route it was admitted on: end those whose route this generation
	// removed or changed.
	ended := s.closeConns(func(c *conn) bool {
		return c.route != "" && !c.sock.state.Load().hasRoute(c.identity().Tenant, c.route)
	})
	for _, c := range ended {
		s.logger.Info("session closed: its route was removed or changed by a reload", "listener", c.listener,
			"tenant", c.identity().Tenant, "source", c.source.String(), "generation", p.Generation)
	}
	for addr, sk := range s.sockets {
		if _, keep := states[addr]; keep {
			continue
		}
		delete(s.sockets, addr)
		sk.ln.Close() // stop accepting now; the drain below may take a while
		// The drain time of the listener's last generation: the one its
		// connections were admitted under.
		grace := sk.state.Load().l.Limits.DrainTimeout
		s.drains.Add(1)
		go func() {
			defer s.drains.Done()
			ctx, cancel := context.WithTimeout(context.Background(), grace)
			defer cancel()
			s.drain(ctx, sk)
		}()
	}
	s.series(p)
	s.checkDescriptorBudget(p)
	s.httpMetrics.Prune() // SOAP series of tenants no longer routed
	s.logger.Info("listeners applied", "generation", p.Generation, "listeners", len(states), "new", len(opened),
		"sessions_ended", len(ended))
	return nil
}

func (s *Server) buildState(l policy.Listener) (*listenerState, error) {
	st := &listenerState{l: l}
	var alpn []string
	switch l.Protocol {
	case policy.ProtoHTTPS, policy.ProtoSOAP:
		var prev *httpproxy.Handler
		if sk, ok := s.sockets[l.ListenAddress()]; ok {
			if old := sk.state.Load(); old != nil && old.l.Name == l.Name {
				prev = old.http
			}
		}
		h, err := httpproxy.New(httpproxy.Config{
			Previous:  prev,
			Listener:  l,
			InFlight:  s.inFlite,
			Metrics:   s.httpMetrics,
			AccessLog: s.access,
			Logger:    s.logger,
		})
		if err != nil {
			return nil, err
		}
		st.http = h
		alpn = []string{"h2", "http/1.1"}
	case policy.ProtoTCP:
		routes, err := buildTCPRoutes(l)
		if err != nil {
			return nil, err
		}
		st.tcp = routes
	case policy.ProtoTN3270, policy.ProtoTN5250:
		h, err := telnet.New(telnet.Config{
			Listener:         l.Name,
			Protocol:         l.Protocol,
			Routes:           l.Routes,
			HandshakeTimeout: l.Limits.HandshakeTimeout,
			Limits:           telnetLimits(l),
			Sessions:         s.sessions,
			Logger:           s.logger,
			// Session start and end lines are the terminal access log.
			SessionLog: s.access,
		})
		if err != nil {
			return nil, fmt.Errorf("listener %q: %w", l.Name, err)
		}
		st.telnet = h
	default:
		return nil, fmt.Errorf("listener %q: %w: %q", l.Name, ErrUnsupported, l.Protocol)
	}
	tc, err := s.tlsSrc.TLSConfig(l.Name)
	if err != nil {
		st.close()
		return nil, fmt.Errorf("listener %q: tls config: %w", l.Name, err)
	}
	if tc == nil || (tc.GetConfigForClient == nil && !demandsClientCert(tc)) {
		st.close()
		return nil, fmt.Errorf("listener %q: %w", l.Name, ErrTLSConfig)
	}
	st.tls = withALPN(tc, alpn)
	if st.http == nil {
		st.routes = map[string]string{}
		for _, r := range l.Routes {
			st.routes[r.Tenant] = fmt.Sprintf("%s|%s|%+v", l.Protocol, l.Name, r)
		}
	}
	return st, nil
}

// withALPN returns a copy of c offering protos, also on the configs its
// GetConfigForClient picks, and refusing any such config that does not
// demand a verified client certificate.
func withALPN(c *tls.Config, protos []string) *tls.Config {
	c = c.Clone()
	c.NextProtos = protos
	c.MinVersion = max(c.MinVersion, tls.VersionTLS12)
	if get := c.GetConfigForClient; get != nil {
		outerOK := demandsClientCert(c)
		c.GetConfigForClient = func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
			cc, err := get(chi)
			if err != nil {
				return nil, err
			}
			if cc == nil {
				// The outer config applies: only if it demands a certificate.
				if !outerOK {
					return nil, ErrTLSConfig
				}
				return nil, nil
			}
			if !demandsClientCert(cc) {
				return nil, ErrTLSConfig
			}
			cc = cc.Clone()
			cc.NextProtos = protos
			cc.MinVersion = max(cc.MinVersion, tls.VersionTLS12)
			return cc, nil
		}
	}
	return c
}

// demandsClientCert reports whether c fails every handshake without a client
// certificate that checks out: either crypto/tls verifies the chain, or the
// TLS layer verifies it itself in VerifyConnection (which also runs on
// resumed sessions).
func demandsClientCert(c *tls.Config) bool {
	switch c.ClientAuth {
	case tls.RequireAndVerifyClientCert:
		return true
	case tls.RequireAnyClientCert:
		return c.VerifyConnection != nil
	}
	return false
}

func (s *Server) newSocket(addr string, ln net.Listener) *socket {
	ctx, cancel := context.WithCancel(context.Background())
	return &socket{addr: addr, ln: ln, done: make(chan struct{}), ctx: ctx, cancel: cancel}
}

func (s *Server) start(sk *socket) {
	go func() {
		defer close(sk.done)
		err := relay.Accept(sk.ln, relay.AcceptConfig{
			Admit:        func(nc net.Conn) func() { return s.accept(sk, nc) },
			AcceptFailed: func(err error, backoff time.Duration) { s.acceptFailed(sk, err, backoff) },
		})
		if err != nil {
			s.logger.Error("accept loop ended", "addr", sk.addr, "err", err)
		}
	}()
}

// serveHTTP hands a request to the socket's current HTTP handler.
func (sk *socket) serveHTTP(w http.ResponseWriter, r *http.Request) {
	st := sk.state.Load()
	if st == nil || st.http == nil {
		// The listener became another protocol under this connection.
		http.Error(w, "misdirected request", http.StatusMisdirectedRequest)
		return
	}
	st.http.ServeHTTP(w, r)
}

func (s *Server) connContext(ctx context.Context, c net.Conn) context.Context {
	v, ok := s.byTLS.Load(c)
	if !ok {
		return ctx
	}
	cn := v.(*conn)
	id := cn.identity()
	ctx = httpproxy.WithUpgradeHook(ctx, func(key string) error { return s.upgraded(cn, key) })
	return httpproxy.WithPeer(ctx, httpproxy.Peer{
		Tenant:      id.Tenant,
		Fingerprint: id.FingerprintSHA256,
		Subject:     id.Subject,
		Source:      cn.source,
		SNI:         cn.tls.ConnectionState().ServerName,
	})
}

// Shutdown stops accepting on every listener, lets open connections finish
// until ctx ends, then closes what is left. It returns ctx's error when it
// had to close connections that were still busy.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	socks := s.sockets
	s.sockets = map[string]*socket{}
	s.mu.Unlock()
	var wg sync.WaitGroup
	var forced atomic.Bool
	for _, sk := range socks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !s.drain(ctx, sk) {
				forced.Store(true)
			}
		}()
	}
	wg.Wait()
	// Listeners an earlier Apply removed are draining on their own clock;
	// end them now too.
	done := make(chan struct{})
	go func() { s.drains.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.closeConns(func(*conn) bool { return true })
		<-done
		forced.Store(true)
	}
	if forced.Load() {
		return fmt.Errorf("shutdown: connections closed while busy: %w", ctx.Err())
	}
	return nil
}

// Close closes every listener and connection at once.
func (s *Server) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s.Shutdown(ctx)
	return nil
}

// drain stops sk and waits for its connections until ctx ends, then closes
// them. It reports whether they all ended by themselves.
func (s *Server) drain(ctx context.Context, sk *socket) bool {
	sk.ln.Close()
	servers := sk.http.all()
	shut := make(chan struct{})
	go func() {
		defer close(shut)
		var wg sync.WaitGroup
		for _, h := range servers {
			wg.Go(func() { h.hs.Shutdown(ctx) }) // closes idle keep-alive connections as they go idle
		}
		wg.Wait()
	}()
	clean := true
	select {
	case <-sk.done:
	case <-ctx.Done():
		clean = false
		// Connections first, then their requests' context: cancelled
		// first, a request could still answer (a 502) before its
		// connection closed, and look finished to its client.
		s.closeConns(func(c *conn) bool { return c.sock == sk })
		sk.cancel()
		<-sk.done
	}
	sk.cancel()
	for _, h := range servers {
		h.hs.Close()
	}
	<-shut
	sk.http.wg.Wait()
	if st := sk.state.Load(); st != nil {
		st.close()
		s.httpMetrics.Prune()
	}
	return clean
}

// Revalidate identifies every connection's certificate again against the
// TLS source's current state, and closes those it refuses or now maps to
// another tenant, for example after a CRL update or a tenant's CA changed.
// Connections still being admitted check again themselves (see admit). The
// checks run outside connMu. It returns how many it closed.
func (s *Server) Revalidate() int {
	s.revalidations.Add(1)
	s.connMu.Lock()
	var live []*conn
	for c := range s.conns {
		if c.identified.Load() {
			live = append(live, c)
		}
	}
	s.connMu.Unlock()
	closed := 0
	for _, c := range live {
		if err := s.stillValid(c, c.identity().Tenant); err != nil {
			s.logger.Info("connection closed: identity no longer valid", "listener", c.listener,
				"tenant", c.identity().Tenant, "source", c.source.String(), "err", err)
			c.raw.Close()
			closed++
		}
	}
	return closed
}

// identify maps a verified connection state to its tenant; an identity
// without one is refused, never admitted anonymously.
func (s *Server) identify(cs tls.ConnectionState) (Identity, error) {
	id, err := s.tlsSrc.Identify(cs)
	if err == nil && id.Tenant == "" {
		err = fmt.Errorf("%w: no tenant", ErrConfig)
	}
	return id, err
}

// stillValid identifies c's certificate again and checks it still maps to
// tenant.
func (s *Server) stillValid(c *conn, tenant string) error {
	id, err := s.identify(c.state())
	if err != nil {
		return err
	}
	if id.Tenant != tenant {
		return fmt.Errorf("certificate now maps to tenant %q, not %q", id.Tenant, tenant)
	}
	return nil
}

// closeConns closes the connections pick chooses (pick runs under connMu)
// and returns them.
func (s *Server) closeConns(pick func(*conn) bool) []*conn {
	s.connMu.Lock()
	var victims []*conn
	for c := range s.conns {
		if pick(c) {
			victims = append(victims, c)
		}
	}
	s.connMu.Unlock()
	for _, c := range victims {
		// The raw socket, not the TLS layer: a close_notify could block on
		// a peer that does not read.
		c.raw.Close()
	}
	return victims
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// Addr returns the bound address of the named listener, useful when the
// policy asked for port 0.
func (s *Server) Addr(listener string) (net.Addr, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sk := range s.sockets {
		if st := sk.state.Load(); st != nil && st.l.Name == listener {
			return sk.ln.Addr(), true
		}
	}
	return nil, false
}
