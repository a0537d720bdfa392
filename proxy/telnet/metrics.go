package telnet

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Session results, the values of the result label.
const (
	ResultOK       = "ok"       // ended by client or host
	ResultRefused  = "refused"  // the tenant's policy refused the negotiation
	ResultNoRoute  = "no_route" // the tenant has no route on this listener
	ResultLimit    = "limit"    // sessions per tenant, negotiation count or length
	ResultTimeout  = "timeout"  // negotiation, idle or maximum session time
	ResultProtocol = "protocol" // malformed Telnet or a failed START_TLS
	ResultBackend  = "backend"  // the host could not be reached
	ResultShutdown = "shutdown" // the listener was drained or closed
)

// Sessions counts terminal sessions per listener and tenant, enforces the
// per-tenant session cap and exports gatehouse_telnet_sessions_total. One
// Sessions outlives reloads: every Handler generation of a listener shares
// it, so the cap holds across them. The caller registers it.
type Sessions struct {
	mu     sync.Mutex
	active map[[2]string]int
	total  *prometheus.CounterVec
}

var _ prometheus.Collector = (*Sessions)(nil)

// NewSessions returns an empty Sessions.
func NewSessions() *Sessions {
	return &Sessions{
		active: map[[2]string]int{},
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_telnet_sessions_total",
			Help: "Terminal sessions by how they ended (ok, refused, no_route, limit, timeout, protocol, backend, shutdown).",
		}, []string{"listener", "tenant", "result"}),
	}
}

// Describe implements prometheus.Collector.
func (s *Sessions) Describe(ch chan<- *prometheus.Desc) { s.total.Describe(ch) }

// Collect implements prometheus.Collector.
func (s *Sessions) Collect(ch chan<- prometheus.Metric) { s.total.Collect(ch) }

// Active returns the open sessions of a tenant on a listener.
func (s *Sessions) Active(listener, tenant string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.active[[2]string{listener, tenant}]
}

func (s *Sessions) acquire(listener, tenant string, max int) bool {
	k := [2]string{listener, tenant}
	s.mu.Lock()
	defer s.mu.Unlock()
	if max > 0 && s.active[k] >= max {
		return false
	}
	s.active[k]++
	return true
}

func (s *Sessions) release(listener, tenant string) {
	k := [2]string{listener, tenant}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.active[k]--; s.active[k] <= 0 {
		delete(s.active, k)
	}
}

func (s *Sessions) count(listener, tenant, result string) {
	s.total.WithLabelValues(listener, tenant, result).Inc()
}
