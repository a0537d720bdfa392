package proxy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/proxy/relay"
)

// tcpRoute is where a tcp listener sends one tenant.
type tcpRoute struct {
	backend string
	tls     *tls.Config // nil: plain TCP to the backend
}

// buildTCPRoutes compiles the routes of a tcp listener that
// policy.CheckListeners passed: one per (tenant, environment).
func buildTCPRoutes(l policy.Listener) (map[policy.TenantEnv]*tcpRoute, error) {
	routes := map[policy.TenantEnv]*tcpRoute{}
	for i, r := range l.Routes {
		tc, err := certs.StreamBackendTLS(r)
		if err != nil {
			return nil, fmt.Errorf("%w: listener %q route %d: %w", ErrConfig, l.Name, i, err)
		}
		routes[r.Env()] = &tcpRoute{backend: r.Backend, tls: tc}
	}
	return routes, nil
}

// relayTCP connects the tenant to its one backend and copies both ways,
// within the tenant's limits.tcp of the generation in force (which a
// reload re-arms, see rearm).
func (s *Server) relayTCP(c *conn, st *listenerState) {
	rt := st.tcp[c.identity().Env()]
	if rt == nil {
		s.logRefusal(c, slog.LevelInfo, "tcp connection refused: no route", nil)
		c.raw.Close()
		return
	}
	bc, err := relay.DialBackend(c.sock.ctx, s.fds, rt.backend, rt.tls, BackendDialTimeout)
	if errors.Is(err, relay.ErrDescriptors) {
		s.refused.WithLabelValues(c.listener, reasonDescriptors).Inc()
		c.raw.Close()
		return
	}
	if err != nil {
		s.logRefusal(c, slog.LevelWarn, "tcp backend unreachable", err)
		c.raw.Close()
		return
	}
	var ended atomic.Pointer[error]
	start := time.Now()
	// No limits yet: setTimerLocked gives it those in force now, not
	// those of before the dial, which a reload may have replaced.
	timer := relay.NewTimer(start, 0, 0, func(why error) {
		ended.Store(&why)
		c.raw.Close()
		bc.Close()
	})
	s.connMu.Lock()
	s.setTimerLocked(c, timer)
	s.connMu.Unlock()
	in, out, err := relay.PipeTimed(c.stream, bc, timer)
	timer.Stop()
	c.raw.Close()
	reason := "closed"
	if why := ended.Load(); why != nil {
		reason = (*why).Error()
	}
	// The session's line in the access log, as HTTP requests and terminal
	// sessions have theirs.
	args := []any{"listener", c.listener, "tenant", c.identity().Tenant, "environment", c.identity().Environment, "fingerprint", c.identity().FingerprintSHA256,
		"source", c.source.String(), "backend", rt.backend, "bytes_in", in, "bytes_out", out,
		"duration", time.Since(start).Round(time.Millisecond).String(), "reason", reason}
	if err != nil {
		args = append(args, "err", err.Error())
	}
	s.access.Info("tcp session ended", args...)
}
