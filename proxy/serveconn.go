package proxy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/proxy/relay"
)

// Errors of ServeConn.
var (
	// ErrUnverified is a connection ServeConn cannot check: no finished
	// TLS handshake with a client certificate, or one that does not
	// prove the Peer it came with.
	ErrUnverified = errors.New("connection not verified")
	// ErrNoListener is a Peer of a listener the generation in force does
	// not have.
	ErrNoListener = errors.New("no such listener")
	// ErrListenerFull is a connection refused because its listener holds
	// limits.connections identified connections.
	ErrListenerFull = errors.New("listener full")
)

// ServeConn serves nc, a connection whose TLS handshake a source other
// than the proxy's own listeners ran (a tunnel stream, a socket handed
// over by another process, a test), as peer on the listener peer.Listener
// names: routed, limited, revalidated, drained and logged exactly as a
// connection that listener accepted itself, peer.Source counting as its
// source.
//
// The proxy trusts certificates, not claims: nc must report its
// handshake (ConnectionState, as a *tls.Conn does), and its client
// certificate is identified again; a peer whose tenant or fingerprint the
// certificate does not prove, or whose server name is not the one of the
// handshake, is refused, so no source can hand a client to another
// tenant's routes, or to another host's. A START_TLS listener, whose handshake runs
// inside Telnet, takes no connection handed in; an HTTPS or SOAP listener
// takes HTTP/1.1 only (net/http serves HTTP/2 on its own *tls.Conn only,
// and closes it there, out of the proxy's sight).
//
// ServeConn returns when the connection ended, having closed nc; the
// error says why it was refused (nil once it was served). Its bytes are
// not in gatehouse_proxy_bytes_total, which counts the listeners' own
// sockets: a source counts its own transport.
func (s *Server) ServeConn(nc net.Conn, peer certs.Peer) error {
	stater, ok := nc.(connStater)
	if !ok {
		nc.Close()
		return fmt.Errorf("%w: it reports no TLS state", ErrUnverified)
	}
	cs := stater.ConnectionState()
	if !cs.HandshakeComplete || len(cs.PeerCertificates) == 0 {
		nc.Close()
		return fmt.Errorf("%w: no finished handshake with a client certificate", ErrUnverified)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		nc.Close()
		return ErrClosed
	}
	sk := s.socketOf(peer.Listener)
	if sk == nil {
		s.mu.Unlock()
		nc.Close()
		return fmt.Errorf("%w: %q", ErrNoListener, peer.Listener)
	}
	sk.handed.Add(1) // under s.mu: drain waits for it (see handed)
	s.mu.Unlock()
	defer sk.handed.Done()

	st := sk.state.Load()
	if st.telnet != nil && st.l.StartTLS {
		nc.Close()
		return fmt.Errorf("%w: listener %q negotiates TLS inside Telnet (START_TLS)", ErrUnverified, st.l.Name)
	}
	c := &conn{sock: sk, listener: st.l.Name, source: peer.Source, closed: make(chan struct{}), stream: nc, handed: true}
	now := time.Now()
	if s.descriptorsLow(c, fdOf(nc), now) {
		nc.Close()
		return relay.ErrDescriptors
	}
	c.adm.src = st.source.Source(c.source.Addr())
	evicted, ok := sk.gate.admitVerified(c, st.l.Limits, now)
	for _, e := range evicted {
		s.evict(e, now)
	}
	if !ok {
		nc.Close()
		s.listenerFull(c, st, now)
		return fmt.Errorf("%w (%d)", ErrListenerFull, st.l.Limits.MaxConns)
	}
	s.fds.Hold()
	// Close the socket under a TLS connection, as for the listener's own:
	// a close_notify could block on a peer that does not read.
	under := nc
	if u, ok := nc.(interface{ NetConn() net.Conn }); ok {
		under = u.NetConn()
	}
	c.raw = relay.NewCountingConn(under, c, func() { s.forget(c) })
	s.connMu.Lock()
	s.conns[c] = struct{}{}
	s.connMu.Unlock()
	defer func() { <-c.closed }()

	seen := s.revalidations.Load()
	err := s.proves(cs, peer)
	if err != nil {
		s.logRefusal(c, slog.LevelWarn, "handed-in connection refused", err, "tenant", peer.Tenant)
		c.raw.Close()
		return err
	}
	return s.serve(c, peer, seen)
}

// proves checks that the certificate of cs proves peer: the TLS source
// identifies it now (CAs, CRLs, identities, validity) as peer's tenant,
// with peer's fingerprint; and that peer's server name is the one the
// client sent in that handshake.
func (s *Server) proves(cs tls.ConnectionState, peer certs.Peer) error {
	id, err := s.identify(cs)
	switch {
	case err != nil:
		return fmt.Errorf("%w: %w", ErrUnverified, err)
	case id.Env() != peer.Env():
		return fmt.Errorf("%w: the certificate proves %s, not %s", ErrUnverified, id.Env(), peer.Env())
	case id.FingerprintSHA256 != peer.FingerprintSHA256:
		return fmt.Errorf("%w: the certificate is not the peer's (fingerprint)", ErrUnverified)
	case cs.ServerName != peer.ServerName:
		// An HTTP request without a Host header is routed by it.
		return fmt.Errorf("%w: the handshake named server %q, not %q", ErrUnverified, cs.ServerName, peer.ServerName)
	}
	return nil
}
