package telnet

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/proxy/relay"
)

// Bounds of the Telnet protocol itself. No configuration key reaches
// them: they are sized so that a real terminal never meets them, and only
// a client that misbehaves does.
const (
	// NegotiationTimeout bounds the time from connect to the data phase
	// (the host's first screen after the terminal was accepted).
	NegotiationTimeout = 30 * time.Second
	// MaxNegotiations caps option negotiations and sub-negotiations, both
	// directions together, before the data phase. A TN3270E or RFC 4777
	// negotiation takes a few dozen.
	MaxNegotiations = 256
	// StormBurst and StormRate bound the client's option negotiations,
	// sub-negotiations and commands but EOR, NOP and GA (AYT, IP, AO, BRK,
	// DM …) after the data phase: StormBurst at once, then StormRate a
	// second. A terminal negotiates a handful of times in a session (a
	// TIMING-MARK answer to each host keepalive) and sends such commands
	// when its user presses Attn or SysReq; a client sending more is
	// flooding the host.
	StormBurst = 256
	StormRate  = 10
	// DialTimeout bounds connecting to the host.
	DialTimeout = 5 * time.Second
)

// bounds are the protocol bounds of a handler: the constants above, which
// the package's tests shrink.
type bounds struct {
	negotiationTimeout time.Duration
	maxNegotiations    int
	maxSub             int
	stormBurst         float64
	stormRate          float64
	dialTimeout        time.Duration
}

var defaultBounds = bounds{
	negotiationTimeout: NegotiationTimeout,
	maxNegotiations:    MaxNegotiations,
	maxSub:             DefaultMaxSub,
	stormBurst:         StormBurst,
	stormRate:          StormRate,
	dialTimeout:        DialTimeout,
}

// Config configures a Handler: one listener of one policy generation.
type Config struct {
	Listener string
	Protocol policy.Protocol // tn3270, tn5250 or tnvip
	Routes   []policy.Route
	// HandshakeTimeout bounds the START_TLS exchange and its TLS handshake
	// (limits.handshake_timeout). ServeStartTLS refuses to run without it.
	HandshakeTimeout time.Duration
	// Limits returns the session limits of a tenant's sessions
	// (limits.telnet with the tenant's overrides) of this generation.
	// Sessions.Rearm hands the listener newer ones: open sessions take
	// them at once, and so do sessions this handler starts afterwards
	// (a STARTTLS session runs on the handler of its accept). Nil means
	// no idle timeout, no session length and no session cap.
	Limits func(tenant string) policy.TelnetLimits
	// Sessions is shared by every generation of the listener; nil gives
	// the handler its own.
	Sessions *Sessions
	// Descriptors, when set, counts each host connection and refuses new
	// ones while the process is within its descriptor reserve.
	Descriptors *relay.Descriptors
	Logger      *slog.Logger
	// SessionLog receives the start and end line of every session; nil
	// uses Logger.
	SessionLog *slog.Logger
}

// Admit proves the tenant of a connection that just completed its
// START_TLS handshake and counts it against the caller's limits; the caller
// may keep cs to re-check the certificate later. An error closes the
// connection.
type Admit func(cs tls.ConnectionState) (certs.Peer, error)

// Handler runs the terminal sessions of one listener generation.
type Handler struct {
	listener  string
	proto     policy.Protocol
	routes    map[policy.TenantEnv]*route
	handshake time.Duration
	limits    func(tenant string) policy.TelnetLimits
	bounds    bounds
	sessions  *Sessions
	fds       *relay.Descriptors
	logger    *slog.Logger
	slog      *slog.Logger
}

// New validates cfg and compiles its routes, which policy.CheckListeners
// judged (New does not again).
func New(cfg Config) (*Handler, error) {
	if !cfg.Protocol.Telnet() {
		return nil, fmt.Errorf("%w: listener %q: protocol %q", ErrConfig, cfg.Listener, cfg.Protocol)
	}
	if cfg.HandshakeTimeout < 0 {
		return nil, fmt.Errorf("%w: listener %q: negative handshake timeout", ErrConfig, cfg.Listener)
	}
	routes, err := buildRoutes(cfg.Listener, cfg.Protocol, cfg.Routes)
	if err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "telnet", "listener", cfg.Listener)
	sl := cfg.SessionLog
	if sl == nil {
		sl = logger
	}
	ss := cfg.Sessions
	if ss == nil {
		ss = NewSessions()
	}
	limits := cfg.Limits
	if limits == nil {
		limits = func(string) policy.TelnetLimits { return policy.TelnetLimits{} }
	}
	return &Handler{
		listener:  cfg.Listener,
		proto:     cfg.Protocol,
		routes:    routes,
		handshake: cfg.HandshakeTimeout,
		limits:    limits,
		bounds:    defaultBounds,
		sessions:  ss,
		fds:       cfg.Descriptors,
		logger:    logger,
		slog:      sl,
	}, nil
}

// Serve carries one session of a client whose TLS the caller terminated
// and whose tenant it proved. It returns when the session ended, having
// closed client; the error says why a session ended other than by a peer
// closing it.
func (h *Handler) Serve(ctx context.Context, client net.Conn, peer certs.Peer) error {
	defer client.Close()
	rt := h.routes[peer.Env()]
	if rt == nil {
		h.sessions.count(h.listener, peer.Env(), ResultNoRoute)
		h.logger.Info("telnet session refused: no route", "tenant", peer.Tenant, "environment", peer.Environment, "source", peer.Source.String())
		return fmt.Errorf("%s: %w", peer.Env(), ErrNoRoute)
	}
	lim, ok := h.sessions.acquire(h, peer.Tenant)
	if !ok {
		h.sessions.count(h.listener, peer.Env(), ResultLimit)
		h.logger.Warn("telnet session refused: tenant at its session limit", "tenant", peer.Tenant,
			"source", peer.Source.String(), "limit", lim.MaxSessionsPerTenant)
		return fmt.Errorf("tenant %q: %w", peer.Tenant, ErrSessionLimit)
	}
	defer h.sessions.release(h.listener, peer.Tenant)

	start := time.Now()
	host, err := relay.DialBackend(ctx, h.fds, rt.backend, rt.tls, h.bounds.dialTimeout)
	if errors.Is(err, relay.ErrDescriptors) {
		h.sessions.count(h.listener, peer.Env(), ResultLimit)
		h.logger.Warn("telnet session refused: the process is within its descriptor reserve", "tenant", peer.Tenant,
			"source", peer.Source.String())
		return err
	}
	if err != nil {
		h.sessions.count(h.listener, peer.Env(), ResultBackend)
		h.logger.Warn("telnet host unreachable", "tenant", peer.Tenant, "backend", rt.backend, "err", err)
		return fmt.Errorf("dial host %s: %w", rt.backend, err)
	}
	s := newSession(h, rt, peer, client, host, start)
	// No limits yet: track sets those in force then, not those of before
	// the dial, which a reload may have replaced meanwhile.
	s.timer = relay.NewTimer(start, 0, 0, func(err error) {
		if errors.Is(err, relay.ErrIdle) {
			s.end("idle timeout", ResultTimeout, ErrIdle)
			return
		}
		s.end("maximum session length", ResultTimeout, ErrSessionLength)
	})
	h.sessions.track(s)
	defer h.sessions.untrack(s)
	h.slog.Info("telnet session started", "listener", h.listener, "tenant", peer.Tenant, "environment", peer.Environment,
		"fingerprint", peer.FingerprintSHA256, "source", peer.Source.String(), "backend", rt.backend)
	err = s.run(ctx)
	s.mu.Lock()
	lu, dev, tt := s.lu, s.dev, s.ttype
	s.mu.Unlock()
	h.sessions.count(h.listener, peer.Env(), s.result)
	h.slog.Info("telnet session ended", "listener", h.listener, "tenant", peer.Tenant, "environment", peer.Environment,
		"fingerprint", peer.FingerprintSHA256, "source", peer.Source.String(),
		"lu", lu, "device", dev, "terminal_type", tt,
		"bytes_in", s.bytesIn.Load(), "bytes_out", s.bytesOut.Load(),
		"duration", time.Since(start).Round(time.Millisecond).String(),
		"reason", s.reason, "result", s.result)
	return err
}

// Errors of Serve and ServeStartTLS.
var (
	ErrNoRoute      = errors.New("no telnet route for tenant")
	ErrSessionLimit = errors.New("tenant at its telnet session limit")
	ErrRefused      = errors.New("refused by the tenant's terminal policy")
	ErrStartTLS     = errors.New("start_tls refused or broken")
	ErrHandshake    = errors.New("tls handshake after start_tls failed")
	ErrNotAdmitted  = errors.New("start_tls client not admitted")
	ErrNegotiation  = errors.New("negotiation did not reach the data phase in time")
	// ErrNegotiationStorm ends a session whose client keeps negotiating
	// after the data phase (StormBurst, StormRate).
	ErrNegotiationStorm = errors.New("telnet negotiation storm after the data phase")
	ErrIdle             = relay.ErrIdle
	ErrSessionLength    = relay.ErrMaxSession
	ErrShutdown         = errors.New("listener shut down")
)
