package proxy

import (
	"syscall"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
	httpproxy "github.com/gatehouse-dmz/gatehouse/proxy/http"
	"github.com/gatehouse-dmz/gatehouse/proxy/relay"
)

// DescriptorReserve is how many descriptors below RLIMIT_NOFILE (limit)
// the proxy keeps free for the control plane: it closes new connections
// at once, and refuses backend connections, while the process is within
// them (see relay.Descriptors).
func DescriptorReserve(limit int) int { return relay.DescriptorReserve(limit) }

// DescriptorsNeeded is how many descriptors p's listeners may hold at
// their limits: per listener its connections, and their backends' —
// one per tcp or terminal session; for HTTPS and SOAP one per upgraded
// connection (at most one per client connection), one per request in
// flight (in_flight_per_tenant of each tenant the listener routes, HTTP/2
// carrying many on one client connection) and the idle connections each
// backend keeps for reuse.
func DescriptorsNeeded(p *policy.Policy) int {
	need := 0
	for _, l := range p.Listeners {
		need += 2 * l.Limits.MaxConns // client, and its session's or tunnel's backend
		if l.Protocol != policy.ProtoHTTPS && l.Protocol != policy.ProtoSOAP {
			continue
		}
		tenants := map[string]bool{}
		for _, r := range l.Routes {
			if !tenants[r.Tenant] {
				tenants[r.Tenant] = true
				need += l.ForTenant(r.Tenant).HTTP.MaxInFlight
			}
			need += httpproxy.MaxIdlePerBackend * max(1, len(r.Backends))
		}
	}
	return need
}

// checkDescriptorBudget warns when the listeners may hold more descriptors
// than RLIMIT_NOFILE leaves room for: the descriptor reserve would then
// refuse connections and requests the limits allow.
func (s *Server) checkDescriptorBudget(p *policy.Policy) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		s.logger.Error("cannot read RLIMIT_NOFILE to check the listeners' descriptor needs", "err", err)
		return
	}
	need := DescriptorsNeeded(p)
	limit := int(min(rl.Cur, uint64(1<<31-1)))
	if need+DescriptorReserve(limit) > limit {
		s.logger.Warn("the listeners' limits need more descriptors than RLIMIT_NOFILE allows: "+
			"connections and requests beyond it are refused to keep the descriptor reserve",
			"descriptors_needed", need, "reserve", DescriptorReserve(limit), "limit", limit,
			"hint", "raise LimitNOFILE, or lower limits.connections or limits.http.in_flight_per_tenant")
	}
}

// descriptorsLow closes c's connection at once when the process is within
// the descriptor reserve; the line when it gets there comes from
// reserveChanged, later ones rate-limited from here.
func (s *Server) descriptorsLow(c *conn, fd int, now time.Time) bool {
	low, open, limit := s.fds.Low(fd)
	if !low {
		return false
	}
	s.refused.WithLabelValues(c.listener, reasonDescriptors).Inc()
	if ok, held := s.reserveLog.allow(now); ok {
		s.logger.Warn("descriptor reserve still reached: new connections are closed at once",
			"listener", c.listener, "open", open, "limit", limit, "reserve", DescriptorReserve(limit),
			"similar_lines_suppressed", held)
	}
	return true
}

// reserveChanged says once that the process reached its descriptor
// reserve, and once that it left it.
func (s *Server) reserveChanged(reached bool, open, limit int) {
	if !reached {
		s.logger.Info("descriptor reserve left: accepting connections again", "open", open, "limit", limit)
		return
	}
	s.reserveLog.allow(time.Now()) // the episode's first line is this one
	s.logger.Warn("descriptor reserve reached: new connections are closed at once and backend connections refused until descriptors are free",
		"open", open, "limit", limit, "reserve", DescriptorReserve(limit))
}

// fdOf returns the descriptor number of c, or -1.
func fdOf(c any) int {
	fd := -1
	if sc, ok := c.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			rc.Control(func(f uintptr) { fd = int(f) })
		}
	}
	return fd
}
