package telnet

import (
	"math"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/proxy/relay"
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

// Results lists every value of the result label.
var Results = []string{ResultOK, ResultRefused, ResultNoRoute, ResultLimit, ResultTimeout, ResultProtocol, ResultBackend, ResultShutdown}

// UnknownTenant labels START_TLS sessions that ended before a tenant was
// proved (results protocol and refused).
const UnknownTenant = "unknown"

// unknownEnv labels them in gatehouse_telnet_sessions_total, tenant and
// environment alike.
var unknownEnv = policy.TenantEnv{Tenant: UnknownTenant, Environment: UnknownTenant}

// SeriesKey is a listener and a (tenant, environment) with series of
// gatehouse_telnet_sessions_total.
type SeriesKey struct {
	Listener string
	Env      policy.TenantEnv
}

// UnknownSeries is the key of a START_TLS listener's sessions that ended
// before a tenant was proved.
func UnknownSeries(listener string) SeriesKey { return SeriesKey{listener, unknownEnv} }

// Sessions counts terminal sessions per listener and tenant, enforces the
// per-tenant session cap, knows the open sessions (to give them new limits
// on a reload) and exports gatehouse_telnet_sessions_total. One Sessions
// outlives reloads: every Handler generation of a listener shares it, so
// the cap holds across them. The caller registers it.
type Sessions struct {
	active relay.Limiter[[2]string] // open sessions per listener and tenant
	mu     sync.Mutex
	open   map[*session]struct{}
	// limits are the session limits of the generation in force per
	// listener (Rearm); a handler of an older generation starts its
	// sessions with them, not with its own.
	limits map[string]func(tenant string) policy.TelnetLimits
	series map[SeriesKey]bool // listener and (tenant, environment) pairs with series
	total  *prometheus.CounterVec
}

var _ prometheus.Collector = (*Sessions)(nil)

// NewSessions returns an empty Sessions.
func NewSessions() *Sessions {
	return &Sessions{
		open:   map[*session]struct{}{},
		limits: map[string]func(string) policy.TelnetLimits{},
		series: map[SeriesKey]bool{},
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_telnet_sessions_total",
			Help: "Terminal sessions by how they ended (ok, refused, no_route, limit, timeout, protocol, backend, shutdown).",
		}, []string{"listener", "tenant", "environment", "result"}),
	}
}

// Describe implements prometheus.Collector.
func (s *Sessions) Describe(ch chan<- *prometheus.Desc) { s.total.Describe(ch) }

// Collect implements prometheus.Collector.
func (s *Sessions) Collect(ch chan<- prometheus.Metric) { s.total.Collect(ch) }

// Active returns the open sessions of a tenant on a listener.
func (s *Sessions) Active(listener, tenant string) int {
	return s.active.Count([2]string{listener, tenant})
}

// acquire counts a new session of tenant on h's listener against the
// session cap in force, and returns the limits in force.
func (s *Sessions) acquire(h *Handler, tenant string) (policy.TelnetLimits, bool) {
	k := [2]string{h.listener, tenant}
	s.mu.Lock()
	defer s.mu.Unlock()
	lim := s.limitsLocked(h)(tenant)
	max := lim.MaxSessionsPerTenant
	if max <= 0 {
		max = math.MaxInt // no cap: a handler without Limits
	}
	return lim, s.active.Acquire(k, max)
}

// limitsLocked returns the limits in force on h's listener: the last
// Rearm's, or h's own before any. s.mu is held.
func (s *Sessions) limitsLocked(h *Handler) func(string) policy.TelnetLimits {
	if l := s.limits[h.listener]; l != nil {
		return l
	}
	return h.limits
}

func (s *Sessions) release(listener, tenant string) {
	s.active.Release([2]string{listener, tenant})
}

func (s *Sessions) count(listener string, te policy.TenantEnv, result string) {
	s.mu.Lock()
	s.series[SeriesKey{listener, te}] = true
	s.mu.Unlock()
	s.total.WithLabelValues(listener, te.Tenant, te.Environment, result).Inc()
}

// track registers a started session for Rearm and gives its timer the
// limits in force, under the lock Rearm holds: whichever of the two runs
// last reads the newest generation, so a session that started during a
// reload never keeps the limits of the generation before.
func (s *Sessions) track(ss *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.open[ss] = struct{}{}
	l := s.limitsLocked(ss.h)(ss.peer.Tenant)
	ss.timer.Set(l.IdleTimeout, l.MaxSession)
}

func (s *Sessions) untrack(ss *session) {
	s.mu.Lock()
	delete(s.open, ss)
	s.mu.Unlock()
}

// Rearm makes limits the ones in force on listener: sessions starting
// from now on take them, whichever generation's handler serves them, and
// the open sessions get the idle timeout and maximum length they give
// for their tenant, for example after a reload. A session already past a
// lowered limit ends at once. A lowered session cap closes no session: it
// refuses new ones until the tenant is below it.
func (s *Sessions) Rearm(listener string, limits func(tenant string) policy.TelnetLimits) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.limits[listener] = limits
	for ss := range s.open {
		if ss.h.listener == listener {
			l := limits(ss.peer.Tenant)
			ss.timer.Set(l.IdleTimeout, l.MaxSession)
		}
	}
}

// Series makes the gatehouse_telnet_sessions_total series of every
// listener and tenant pair in want exist (at zero until counted), so a
// dashboard sees the configuration before the first session, and deletes
// those of pairs no longer wanted. A pair not wanted appears again if a
// session of it (one of a route a reload removed, say) ends later; the
// next Series call removes it.
func (s *Sessions) Series(want map[SeriesKey]bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.series {
		if !want[k] {
			s.total.DeletePartialMatch(prometheus.Labels{"listener": k.Listener, "tenant": k.Env.Tenant, "environment": k.Env.Environment})
			delete(s.series, k)
		}
	}
	for k := range want {
		results := Results
		if k.Env == unknownEnv {
			results = []string{ResultProtocol, ResultRefused}
		}
		for _, r := range results {
			s.total.WithLabelValues(k.Listener, k.Env.Tenant, k.Env.Environment, r)
		}
		s.series[k] = true
	}
}
