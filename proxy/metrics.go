package proxy

import (
	"maps"
	"slices"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/proxy/telnet"
)

// tenantBytes counts into one listener's and tenant's series.
type tenantBytes struct{ in, out prometheus.Counter }

func (t tenantBytes) Count(in bool, n int) {
	if in {
		t.in.Add(float64(n))
	} else {
		t.out.Add(float64(n))
	}
}

func (s *Server) tenantBytes(listener, tenant string) tenantBytes {
	return tenantBytes{
		in:  s.bytes.WithLabelValues(listener, tenant, "in"),
		out: s.bytes.WithLabelValues(listener, tenant, "out"),
	}
}

// series makes the per-listener and per-tenant series the configuration
// determines exist from the start, and drops those of listeners and
// tenants it no longer has: connections_active per listener and routed
// tenant, telnet_sessions_total per terminal listener, routed tenant and
// result, connections_refused_total per listener and reason.
func (s *Server) series(p *policy.Policy) {
	want := map[[2]string]bool{}
	terminal := map[telnet.SeriesKey]bool{}
	configured := map[activeKey]bool{}
	var names []string
	for _, l := range p.Listeners {
		names = append(names, l.Name)
		for _, r := range l.Routes {
			k := [2]string{l.Name, r.Tenant}
			want[k] = true
			configured[activeKey{l.Name, r.Env()}] = true
			if l.Protocol.Telnet() {
				terminal[telnet.SeriesKey{Listener: l.Name, Env: r.Env()}] = true
			}
		}
		if l.StartTLS {
			terminal[telnet.UnknownSeries(l.Name)] = true
		}
	}
	s.connMu.Lock()
	s.configured = configured
	s.connMu.Unlock()
	s.sessions.Series(terminal)
	for _, n := range s.seriesOf {
		if !slices.Contains(names, n) {
			s.refused.DeletePartialMatch(prometheus.Labels{"listener": n})
		}
	}
	for _, n := range names {
		for _, r := range refusalReasons {
			s.refused.WithLabelValues(n, r)
		}
	}
	s.seriesOf = names
	s.byteSeries(want, names)
}

// byteSeries gives every configured listener and routed tenant, and each
// listener's connections that never proved a tenant, their byte series at
// 0, and deletes those of pairs a reload removed once no connection of
// theirs is open (a draining one still counts into its series).
func (s *Server) byteSeries(want map[[2]string]bool, listeners []string) {
	now := maps.Clone(want)
	for _, n := range listeners {
		now[[2]string{n, unknownTenant}] = true
	}
	s.connMu.Lock()
	defer s.connMu.Unlock()
	for k := range s.bytesOf {
		if !now[k] && s.activeOf(k) == 0 {
			s.bytes.DeleteLabelValues(k[0], k[1], "in")
			s.bytes.DeleteLabelValues(k[0], k[1], "out")
			delete(s.bytesOf, k)
		}
	}
	if s.bytesOf == nil {
		s.bytesOf = map[[2]string]bool{}
	}
	for k := range now {
		s.bytes.WithLabelValues(k[0], k[1], "in")
		s.bytes.WithLabelValues(k[0], k[1], "out")
		s.bytesOf[k] = true
	}
}

// collectConns reports the identified connections of every configured
// listener and tenant (zero included) and of any still open beyond them
// (draining after a reload), and the unfinished handshakes per listener.
func (s *Server) collectConns(ch chan<- prometheus.Metric) {
	s.connMu.Lock()
	for k := range s.configured {
		ch <- prometheus.MustNewConstMetric(s.activeDesc, prometheus.GaugeValue, float64(s.active[k]), k.listener, k.env.Tenant, k.env.Environment)
	}
	for k, n := range s.active {
		if !s.configured[k] {
			ch <- prometheus.MustNewConstMetric(s.activeDesc, prometheus.GaugeValue, float64(n), k.listener, k.env.Tenant, k.env.Environment)
		}
	}
	s.connMu.Unlock()
	s.mu.Lock()
	for _, sk := range s.sockets {
		if st := sk.state.Load(); st != nil {
			_, pending := sk.gate.counts()
			ch <- prometheus.MustNewConstMetric(s.pendingDesc, prometheus.GaugeValue, float64(pending), st.l.Name)
		}
	}
	s.mu.Unlock()
}

// activeKey is a series of gatehouse_proxy_connections_active: a listener
// and the (tenant, environment) of its connections. Environments are
// bounded by the configuration, as tenants are.
type activeKey struct {
	listener string
	env      policy.TenantEnv
}

// activeOf counts the open connections of a listener and tenant (k), in
// every environment. connMu is held.
func (s *Server) activeOf(k [2]string) int {
	n := 0
	for a, c := range s.active {
		if a.listener == k[0] && a.env.Tenant == k[1] {
			n += c
		}
	}
	return n
}
