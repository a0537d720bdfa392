package proxy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/proxy/telnet"
)

// serveStartTLS hands the plain connection of a START_TLS listener to the
// telnet handler, which runs the handshake and calls back to learn the
// tenant before it connects anywhere. The handler counts the session's
// end; the refusals decided here are logged here, rate-limited.
func (s *Server) serveStartTLS(c *conn, st *listenerState) {
	defer c.abort(nil)
	admit := func(cs tls.ConnectionState) (certs.Peer, error) {
		if !c.sock.gate.handshaken(c) {
			c.abort(errEvicted) // not the client's failure: the handler counts nothing
			return certs.Peer{}, errEvicted
		}
		if len(cs.PeerCertificates) == 0 {
			return certs.Peer{}, ErrTLSConfig
		}
		seen := s.revalidations.Load()
		id, err := s.handshakeDone(c, cs)
		if err != nil {
			s.logRefusal(c, slog.LevelInfo, "client certificate not accepted", err)
			return certs.Peer{}, err
		}
		c.idMu.Lock()
		c.cs = &cs
		c.idMu.Unlock()
		if _, err := s.admit(c, id, seen); err != nil {
			s.logRefusal(c, slog.LevelWarn, "connection refused", err, "tenant", id.Tenant)
			return certs.Peer{}, err
		}
		if c.route != st.routeKey(id.Env()) {
			// A reload changed this tenant's route during the handshake;
			// the handler below still holds the old one.
			err := fmt.Errorf("%w: route of tenant %q changed by a reload", ErrConfig, id.Tenant)
			s.logRefusal(c, slog.LevelWarn, "connection refused", err)
			return certs.Peer{}, err
		}
		return id, nil
	}
	err := st.telnet.ServeStartTLS(c.ctx, c.raw, st.tls, admit)
	if !c.sock.gate.handshaken(c) {
		c.raw.Close() // evicted: logged and counted by the gate's caller
		return
	}
	var he *telnet.HandshakeError
	switch {
	case errors.As(err, &he):
		s.handshakeFailed(c, he.State, he.Err)
	case errors.Is(err, telnet.ErrStartTLS):
		s.logRefusal(c, slog.LevelInfo, "START_TLS refused", err)
	}
	c.raw.Close()
}
