package proxy

import (
	"context"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs"
)

// peerEnvironment is the environment a connection's certificate proved
// ("default" for a tenant without environments).
func peerEnvironment(p certs.Peer) string { return p.Env().Environment }

// sessionState is what the admin's drain marks on a connection: draining,
// and how many HTTP requests it is serving now.
type sessionState struct {
	draining atomic.Bool
	busy     atomic.Int32
}

// connKey carries a connection to its requests' context.
type connKey struct{}

func withConn(ctx context.Context, c *conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// requestStarted counts a request on its connection and, on a draining
// HTTP/1 connection, asks net/http to close it after this response: the
// connection ends at its request boundary. The returned func ends the
// count.
func requestStarted(w http.ResponseWriter, r *http.Request) func() {
	c, _ := r.Context().Value(connKey{}).(*conn)
	if c == nil {
		return func() {}
	}
	c.sess.busy.Add(1)
	if c.sess.draining.Load() && r.ProtoMajor == 1 {
		w.Header().Set("Connection", "close")
	}
	return func() { c.sess.busy.Add(-1) }
}

// inScope reports whether c belongs to tenant and, unless env is "", to
// its environment env.
func inScope(c *conn, tenant, env string) bool {
	if !c.identified.Load() {
		return false
	}
	p := c.identity()
	return p.Tenant == tenant && (env == "" || peerEnvironment(p) == env)
}

// Kill closes every session of tenant (of its environment env, unless
// "") at once and returns how many.
func (s *Server) Kill(tenant, env string) int {
	gone := s.closeConns(func(c *conn) bool { return inScope(c, tenant, env) })
	if len(gone) > 0 {
		s.logger.Info("sessions killed by an admin", "tenant", tenant, "environment", env, "sessions", len(gone))
	}
	return len(gone)
}

// Drain ends the sessions of tenant (of its environment env, unless "")
// gracefully: HTTP connections with no request in progress are closed at
// once; HTTP/1 connections serving a request finish it and end at their
// next request (its response carries Connection: close); tcp and terminal
// sessions, and whatever is still open after grace, are closed then. New
// sessions are not refused. It returns how many sessions it found and
// does not wait for the grace.
func (s *Server) Drain(tenant, env string, grace time.Duration) int {
	s.connMu.Lock()
	var found, idle []*conn
	for c := range s.conns {
		if !inScope(c, tenant, env) {
			continue
		}
		c.sess.draining.Store(true)
		found = append(found, c)
		if c.route == "" && c.sess.busy.Load() == 0 { // an HTTP connection between requests
			idle = append(idle, c)
		}
	}
	s.connMu.Unlock()
	for _, c := range idle {
		c.raw.Close()
	}
	if len(found) == 0 {
		return 0
	}
	s.logger.Info("sessions draining by an admin", "tenant", tenant, "environment", env, "sessions", len(found), "closed_idle", len(idle), "grace", grace)
	time.AfterFunc(grace, func() {
		set := map[*conn]bool{}
		for _, c := range found {
			set[c] = true
		}
		if left := s.closeConns(func(c *conn) bool { return set[c] }); len(left) > 0 {
			s.logger.Info("drain grace over: sessions closed", "tenant", tenant, "environment", env, "sessions", len(left))
		}
	})
	return len(found)
}
