package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/proxy/relay"
)

// handle owns one connection its own listener accepted until it closes:
// handshake, identify, then serve. It returns only when the connection
// is closed, so the accept loop waits for it on shutdown. st is the
// generation the connection was accepted under.
func (s *Server) handle(c *conn, st *listenerState) {
	sk := c.sock
	defer func() { <-c.closed }()

	if st.telnet != nil && st.l.StartTLS {
		// The handshake happens inside the Telnet START_TLS exchange.
		s.serveStartTLS(c, st)
		return
	}
	tc := tls.Server(c.raw, st.tls)
	c.stream = tc
	err := relay.Handshake(sk.ctx, tc, st.l.Limits.HandshakeTimeout)
	if !sk.gate.handshaken(c) {
		c.raw.Close() // evicted: logged and counted by the gate's caller
		return
	}
	if err != nil {
		s.handshakeFailed(c, tc.ConnectionState(), err)
		c.raw.Close()
		return
	}
	cs := tc.ConnectionState()
	// The chain may have been verified by crypto/tls (VerifiedChains) or by
	// the TLS layer's own VerifyConnection; Identify below re-checks it
	// either way. No certificate at all should be impossible: fail closed.
	if len(cs.PeerCertificates) == 0 {
		s.logger.Warn("connection without client certificate closed", "listener", c.listener, "source", c.source.String())
		c.raw.Close()
		return
	}
	seen := s.revalidations.Load()
	peer, err := s.handshakeDone(c, cs)
	if err != nil {
		s.logRefusal(c, slog.LevelInfo, "client certificate not accepted", err)
		c.raw.Close()
		return
	}
	s.serve(c, peer, seen)
}

// serve carries a verified connection (c.stream, proved to be peer) from
// admission to its end, whichever source it came from: counted against
// its tenant's share of the listener, then handed to the listener's
// protocol with the generation in force at admission (a reload during the
// handshake must not send the session where the new policy does not).
// seen is the revalidation count read before peer was made (see admit).
// It returns admission's refusal, nil once the connection was served.
func (s *Server) serve(c *conn, peer certs.Peer, seen uint64) error {
	st, err := s.admit(c, peer, seen)
	if err != nil {
		s.logRefusal(c, slog.LevelWarn, "connection refused", err, "tenant", peer.Tenant)
		c.raw.Close()
		return err
	}
	switch {
	case st.l.Tunnel:
		s.handoff(c.sock.ctx, c.stream, peer, st.l.Protocol)
		c.raw.Close()
	case st.http != nil:
		return s.serveHTTP(c, st)
	case st.tcp != nil:
		s.relayTCP(c, st)
	case st.telnet != nil:
		st.telnet.Serve(c.sock.ctx, c.stream, peer)
		c.raw.Close()
	default:
		c.raw.Close()
	}
	return nil
}

// handshakeFailed hands a failed handshake and what the client sent in it
// to the TLS layer, which counts and remembers it, and logs the refusal
// with the result, the reason and the client certificate's subject, issuer
// and fingerprint, all bounded and printable (the error itself carries the
// client's names as they came). A client that closed before sending a
// certificate (a health checker, a load generator) was refused nothing:
// that is logged at debug only.
func (s *Server) handshakeFailed(c *conn, cs tls.ConnectionState, err error) {
	r := s.tlsSrc.HandshakeFailed(c.listener, c.source, cs, err)
	if r.Result == certs.ResultClientClosed {
		s.logger.Debug("TLS handshake abandoned by the client before it sent a certificate",
			"listener", c.listener, "source", c.source.String(), "err", err)
		return
	}
	s.logRefusal(c, slog.LevelInfo, "TLS handshake refused", nil, r.LogArgs()...)
}

// handshakeDone tells the TLS layer that c's handshake completed and
// returns the Peer it proves; a Peer without a tenant, or of another
// listener or source, is refused.
func (s *Server) handshakeDone(c *conn, cs tls.ConnectionState) (certs.Peer, error) {
	p, err := s.tlsSrc.HandshakeDone(c.listener, c.source, cs)
	switch {
	case err != nil:
	case p.Tenant == "":
		err = fmt.Errorf("%w: no tenant", ErrConfig)
	case p.Listener != c.listener || p.Source != c.source:
		err = fmt.Errorf("%w: peer of listener %q from %s, not of this connection", ErrConfig, p.Listener, p.Source)
	}
	return p, err
}

// logRefusal logs at level a refusal any client can cause (a failed
// handshake, a certificate no longer accepted or a tenant at its limit
// after the handshake, a request head the framing guard refused) with its
// source, cause (when err is not nil) and the extra key-value pairs, at
// most 10 lines a second after a burst of 50.
func (s *Server) logRefusal(c *conn, level slog.Level, msg string, err error, extra ...any) {
	ok, held := s.refusals.allow(time.Now())
	if !ok {
		return
	}
	args := []any{"listener", c.listener, "source", c.source.String()}
	if err != nil {
		args = append(args, "err", err)
	}
	args = append(args, extra...)
	if id := c.identity(); id.Tenant != "" {
		args = append(args, "tenant", id.Tenant, "environment", id.Environment)
	}
	if held > 0 {
		args = append(args, "similar_lines_suppressed", held)
	}
	s.logger.Log(context.Background(), level, msg, args...)
}
