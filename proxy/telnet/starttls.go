package telnet

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"
)

// ServeStartTLS runs a session on a listener with `starttls: true`: raw is
// the plain TCP connection. The proxy asks for START_TLS (IAC DO
// START_TLS), completes the FOLLOWS exchange, runs the TLS handshake with
// tc (which must demand a client certificate), lets admit prove the tenant
// and only then connects to the host. A client that refuses START_TLS, or
// sends anything else first, is disconnected; no byte of it reaches a host.
// A failed handshake is reported as ErrHandshake, for the caller's TLS
// metrics; a refused or broken START_TLS as ErrStartTLS; a refusal of
// admit as ErrNotAdmitted. None is logged here: any client can cause them,
// and the caller logs them rate-limited. Ending ctx ends the negotiation;
// one ended so (the caller evicted the connection, or shut down) is not
// the client's failure, and is not counted.
func (h *Handler) ServeStartTLS(ctx context.Context, raw net.Conn, tc *tls.Config, admit Admit) error {
	defer raw.Close()
	tconn, err := h.startTLS(ctx, raw, tc)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("start_tls ended by the caller: %w", context.Cause(ctx))
		}
		h.sessions.count(h.listener, unknownEnv, ResultProtocol)
		return err
	}
	peer, err := admit(tconn.ConnectionState())
	if err != nil {
		if ctx.Err() == nil {
			h.sessions.count(h.listener, unknownEnv, ResultRefused)
		}
		return fmt.Errorf("%w: %w", ErrNotAdmitted, err)
	}
	return h.Serve(ctx, tconn, peer)
}

func (h *Handler) startTLS(ctx context.Context, raw net.Conn, tc *tls.Config) (*tls.Conn, error) {
	if tc == nil {
		return nil, fmt.Errorf("%w: no tls config", ErrConfig)
	}
	if h.handshake <= 0 {
		return nil, fmt.Errorf("%w: no handshake timeout", ErrConfig)
	}
	deadline := time.Now().Add(h.handshake)
	if err := raw.SetDeadline(deadline); err != nil {
		return nil, fmt.Errorf("set deadline: %w", err)
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if _, err := raw.Write([]byte{cmdIAC, cmdDO, optStartTLS}); err != nil {
		return nil, fmt.Errorf("%w: send DO START_TLS: %w", ErrStartTLS, err)
	}
	var (
		p       = Parser{MaxSub: 64}
		sent    bool // our FOLLOWS
		follows bool // theirs, after ours was asked for
		buf     = make([]byte, 512)
	)
	errDone := errors.New("done")
	emit := func(t Token) error {
		switch {
		case t.Kind == Negotiation && t.Opt == optStartTLS && t.Cmd == cmdWILL:
			if !sent {
				sent = true
				if _, err := raw.Write([]byte{cmdIAC, cmdSB, optStartTLS, startTLSFollows, cmdIAC, cmdSE}); err != nil {
					return fmt.Errorf("send FOLLOWS: %w", err)
				}
			}
			return nil
		case t.Kind == Negotiation && t.Opt == optStartTLS && t.Cmd == cmdWONT:
			return errors.New("client refused START_TLS")
		case t.Kind == Sub && t.Opt == optStartTLS && len(t.Payload) == 1 && t.Payload[0] == startTLSFollows && sent:
			follows = true
			return errDone
		}
		return fmt.Errorf("unexpected %s before START_TLS", describe(t))
	}
	var rest []byte
	for !follows {
		n, err := raw.Read(buf)
		// One byte at a time: the TLS ClientHello may follow FOLLOWS in the
		// same read and must go to the TLS layer untouched.
		for i := 0; i < n && !follows; i++ {
			if ferr := p.Feed(buf[i:i+1], emit); ferr != nil && !errors.Is(ferr, errDone) {
				return nil, fmt.Errorf("%w: %w", ErrStartTLS, ferr)
			}
			if follows {
				rest = append(rest, buf[i+1:n]...)
			}
		}
		if err != nil && !follows {
			return nil, fmt.Errorf("%w: %w", ErrStartTLS, err)
		}
	}
	tconn := tls.Server(&prefixConn{Conn: raw, prefix: rest}, tc)
	if err := tconn.HandshakeContext(ctx); err != nil {
		return nil, &HandshakeError{State: tconn.ConnectionState(), Err: err}
	}
	if len(tconn.ConnectionState().PeerCertificates) == 0 {
		return nil, fmt.Errorf("%w: no client certificate", ErrStartTLS)
	}
	stop()
	if err := raw.SetDeadline(time.Time{}); err != nil {
		return nil, fmt.Errorf("clear deadline: %w", err)
	}
	return tconn, nil
}

func describe(t Token) string {
	switch t.Kind {
	case Data:
		return "data"
	case Command:
		return fmt.Sprintf("command %d", t.Cmd)
	case Negotiation:
		return fmt.Sprintf("negotiation %d %d", t.Cmd, t.Opt)
	}
	return fmt.Sprintf("sub-negotiation %d", t.Opt)
}

// prefixConn reads prefix before the connection itself.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// HandshakeError is a failed TLS handshake after START_TLS (errors.Is
// ErrHandshake). State is the connection's state after the failure, with
// the certificates the client sent, for the caller's TLS layer to judge.
type HandshakeError struct {
	State tls.ConnectionState
	Err   error
}

func (e *HandshakeError) Error() string { return ErrHandshake.Error() + ": " + e.Err.Error() }

// Unwrap gives ErrHandshake and the handshake's own error.
func (e *HandshakeError) Unwrap() []error { return []error{ErrHandshake, e.Err} }
