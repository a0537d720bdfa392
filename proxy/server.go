package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/policy"
	httpproxy "github.com/gatehouse-dmz/gatehouse/proxy/http"
	"github.com/gatehouse-dmz/gatehouse/proxy/relay"
	"github.com/gatehouse-dmz/gatehouse/proxy/telnet"
)

// Errors of Server.
var (
	ErrUnsupported = policy.ErrProtocol
	ErrClosed      = errors.New("proxy server closed")
	ErrConfig      = errors.New("invalid proxy configuration")
	ErrTLSConfig   = errors.New("tls config does not require a verified client certificate")
	ErrConnLimit   = errors.New("tenant at its connection limit")

	errClosedMeanwhile = errors.New("connection closed while it was admitted (revalidation or drain)")
	errClosedByProxy   = errors.New("connection closed by the proxy (drain or shutdown)")
)

// tenantSlot is where a tenant's connections are counted against
// connections_per_tenant: one bound address.
type tenantSlot struct {
	sk     *socket
	tenant string
}

// unknownTenant labels bytes of connections that never proved a tenant.
const unknownTenant = "unknown"

// Config configures a Server.
type Config struct {
	Logger *slog.Logger
	TLS    TLSSource
	// AccessLog receives one line per HTTP request; give it a JSON handler.
	// Nil discards.
	AccessLog *slog.Logger
	// DialControl, when not nil, judges every backend connection before
	// it is made, on the address actually dialled; an error refuses it (a
	// connector's allow-list).
	DialControl func(network, address string, c syscall.RawConn) error
	// Handoff serves the connections of Tunnel listeners (a gateway's):
	// identified and admitted, they go to it instead of a protocol. It
	// owns nc and returns when the session ended.
	Handoff func(ctx context.Context, nc net.Conn, peer certs.Peer, proto policy.Protocol)
	// Listen opens the listening socket of a listen address; nil binds it
	// with net.Listen. A privilege-separated worker takes the sockets the
	// enforcer bound for it.
	Listen func(addr string) (net.Listener, error)
}

// Server owns every listener socket and every client connection.
type Server struct {
	logger  *slog.Logger
	tlsSrc  TLSSource
	access  *slog.Logger
	handoff func(ctx context.Context, nc net.Conn, peer certs.Peer, proto policy.Protocol)
	listen  func(addr string) (net.Listener, error)

	mu      sync.Mutex // serialises Apply, Shutdown and Close
	sockets map[string]*socket
	closed  bool
	drains  sync.WaitGroup

	connMu sync.Mutex
	conns  map[*conn]struct{}
	// perTen counts identified connections per socket and tenant for
	// connections_per_tenant: per socket, not per listener name, so that
	// renaming a listener does not give its tenants a second share.
	// active counts them per listener name, tenant and environment, for
	// the gauge.
	perTen     relay.Limiter[tenantSlot]
	active     map[activeKey]int
	configured map[activeKey]bool // what the generation in force routes
	inFlite    *httpproxy.InFlight

	httpMetrics *httpproxy.Metrics
	sessions    *telnet.Sessions // terminal sessions, shared by every generation

	fds        *relay.Descriptors // every client and backend connection, and the reserve
	reserveLog *logLimiter        // "descriptor reserve reached" lines
	acceptLog  *logLimiter        // accept errors
	// seriesOf are the listeners whose refusal series exist, and bytesOf
	// the (listener, tenant) pairs whose byte series exist; Apply only.
	seriesOf []string
	bytesOf  map[[2]string]bool

	revalidations atomic.Uint64 // Revalidate calls so far; see admit
	refusals      *logLimiter   // "TLS handshake refused" and other lines any client causes
	// gateLog bounds the gate's lines (evictions, a full listener): a
	// flood writes them by the thousand, and must not use up the
	// refusals' lines, which name the certificates that were refused.
	gateLog     *logLimiter
	activeDesc  *prometheus.Desc
	pendingDesc *prometheus.Desc
	refused     *prometheus.CounterVec
	bytes       *prometheus.CounterVec
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
	s := &Server{
		logger:      logger.With("component", "proxy"),
		refusals:    newLogLimiter(10, 50),
		gateLog:     newLogLimiter(1, 10),
		acceptLog:   newLogLimiter(0.5, 1),
		reserveLog:  newLogLimiter(0.1, 1),
		tlsSrc:      cfg.TLS,
		handoff:     cfg.Handoff,
		listen:      cfg.Listen,
		access:      access,
		sockets:     map[string]*socket{},
		conns:       map[*conn]struct{}{},
		active:      map[activeKey]int{},
		configured:  map[activeKey]bool{},
		inFlite:     httpproxy.NewInFlight(),
		httpMetrics: httpproxy.NewMetrics(),
		sessions:    telnet.NewSessions(),
		activeDesc: prometheus.NewDesc("gatehouse_proxy_connections_active",
			"Client connections open after a tenant was identified, by listener, tenant and environment.", []string{"listener", "tenant", "environment"}, nil),
		pendingDesc: prometheus.NewDesc("gatehouse_proxy_handshakes_pending",
			"Connections of a listener that have not finished their TLS handshake (limits.pre_handshake caps them).",
			[]string{"listener"}, nil),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_proxy_connections_refused_total",
			Help: "Connections the proxy closed before serving them, by reason: listener_full, descriptors (the descriptor reserve), " +
				"pre_handshake and pre_handshake_source (an unfinished handshake, evicted to make room for a new connection), tenant_limit.",
		}, []string{"listener", "reason"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_proxy_bytes_total",
			Help: "Bytes on the client side of the listeners, TLS records included; direction in is from the client.",
		}, []string{"listener", "tenant", "direction"}),
	}
	s.fds = relay.NewDescriptors(relay.DescriptorsConfig{
		CountFailed: func(err error) {
			s.logger.Error("cannot count the open file descriptors: the descriptor reserve goes by the proxy's own count "+
				"and RLIMIT_NOFILE until a count succeeds", "err", err)
		},
		Reserve: s.reserveChanged,
		Control: cfg.DialControl,
	})
	return s, nil
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

// Addr returns the bound address of the named listener, useful when the
// policy asked for port 0.
func (s *Server) Addr(listener string) (net.Addr, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sk := s.socketOf(listener); sk != nil {
		return sk.ln.Addr(), true
	}
	return nil, false
}
