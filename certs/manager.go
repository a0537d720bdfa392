package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// Config configures a Manager.
type Config struct {
	Logger *slog.Logger
	// StateDir holds the session-ticket keys (tls-tickets/<listener>). Empty
	// falls back to the policy's StateDir; when both are empty the keys live
	// in memory only and resumption does not survive a restart.
	StateDir string
	// TicketDir, when set, holds the session-ticket keys instead of
	// StateDir/tls-tickets (a worker's is the directory the enforcer
	// opened for it, as /proc/self/fd/N).
	TicketDir string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// PollInterval is how often Watch looks at the files; zero means 1s.
	PollInterval time.Duration
	// Files is where the policy's files are read; nil means the process's
	// (SetFileSource; the operating system unless a worker set it).
	Files FileSource
}

// Peer is the verified identity of one connection: who its client
// certificate proves (tenant, environment, fingerprint, subject, expiry) and, once
// HandshakeDone made it, the listener it came in on, the source it came
// from and the server name it asked for. It is made once, after the
// handshake, and passed as a value to everything that serves the
// connection; Tenant and Environment are the only fields routing trusts.
type Peer struct {
	Tenant string
	// Environment is the tenant's environment the certificate proves:
	// policy.DefaultEnvironment for a tenant without environments.
	Environment       string
	FingerprintSHA256 string // hex SHA-256 over the DER certificate
	Subject           string
	NotAfter          time.Time
	Listener          string
	Source            netip.AddrPort
	ServerName        string // SNI, "" when the client sent none
}

// Manager serves TLS configurations for the listeners and maps client
// certificates to tenants. All methods are safe for concurrent use.
type Manager struct {
	logger    *slog.Logger
	now       func() time.Time
	stateDir  string
	ticketDir string
	poll      time.Duration
	files     FileSource

	state atomic.Pointer[state]

	mu         sync.Mutex // serialises writers: Apply, reload, ticket rotation
	tickets    map[string]*ticketSet
	onChange   []func()
	failedSig  [32]byte // digest of the file contents that last failed to load
	pendingSig [32]byte // digest of the changed file contents seen at the last poll

	handshakes *prometheus.CounterVec
	expiryDesc *prometheus.Desc
	refusals   refusalRing
}

var _ prometheus.Collector = (*Manager)(nil)

// New returns a Manager without listeners or tenants; every handshake fails
// until Apply succeeds.
func New(cfg Config) (*Manager, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = time.Second
	}
	if cfg.Files == nil {
		cfg.Files = defaultFiles()
	}
	m := &Manager{
		files:     cfg.Files,
		logger:    cfg.Logger.With("component", "certs"),
		now:       cfg.Now,
		stateDir:  cfg.StateDir,
		ticketDir: cfg.TicketDir,
		poll:      cfg.PollInterval,
		tickets:   map[string]*ticketSet{},
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_tls_handshakes_total",
			Help: "TLS handshakes on the listeners by tenant and result.",
		}, []string{"listener", "tenant", "result"}),
		expiryDesc: prometheus.NewDesc("gatehouse_cert_expiry_timestamp_seconds",
			"When a server certificate or tenant CA expires (earliest in the bundle), or a tenant's CRL is due (earliest nextUpdate).",
			[]string{"kind", "name"}, nil),
	}
	m.state.Store(&state{listeners: map[string]*listenerState{}, pool: x509.NewCertPool()})
	return m, nil
}

// Apply loads every server certificate and key, tenant CA bundle, CRL and
// identity list the policy names, then publishes them at once. On any error
// the previous generation stays in force.
func (m *Manager) Apply(p *policy.Policy) error {
	if err := m.apply(p, "apply"); err != nil {
		return err
	}
	return nil
}

// Reload re-reads the files of the current policy (SIGHUP).
func (m *Manager) Reload() error {
	p := m.state.Load().policy
	if p == nil {
		return nil
	}
	return m.apply(p, "reload")
}

// apply builds the generation of p whole, ticket keys included, and only
// then writes the ticket keys that changed and swaps: a refused policy
// leaves the keys in force, their files and the listeners' configs alone.
// A generation the daemon applies (why "apply") is the daemon's to log:
// it says once whether the whole generation, every layer, took it. Files
// the manager reloads itself, it logs.
func (m *Manager) apply(p *policy.Policy, why string) error {
	own := why != "apply"
	m.mu.Lock()
	err := checkTLS(p.TLS)
	var tickets map[string]*ticketSet
	if err == nil {
		tickets, err = m.planTickets(p)
	}
	var st *state
	if err == nil {
		st, err = m.build(p, tickets)
	}
	if err == nil {
		err = m.commitTickets(tickets)
	}
	if err != nil {
		m.mu.Unlock()
		if own {
			m.logger.Error("tls state not loaded, previous stays in force", "reason", why, "generation", p.Generation, "err", err)
		}
		return err
	}
	m.tickets = tickets
	m.state.Store(st)
	m.initSeries(p)
	m.failedSig = [32]byte{}
	fns := append([]func(){}, m.onChange...)
	m.mu.Unlock()
	level := slog.LevelDebug
	if own {
		level = slog.LevelInfo
	}
	m.logger.Log(context.Background(), level, "tls state loaded", "reason", why, "generation", p.Generation,
		"listeners", len(st.listeners), "tenants", len(st.tenants), "files", len(st.files))
	for _, fn := range fns {
		fn()
	}
	return nil
}

// checkTLS refuses TLS settings the manager cannot honour.
func checkTLS(t policy.TLS) error {
	switch t.CRLStale {
	case "", policy.CRLStaleFail, policy.CRLStaleWarn:
	default:
		return fmt.Errorf("%q: %w", t.CRLStale, ErrBadCRLStale)
	}
	if t.TicketRotation < 0 {
		return fmt.Errorf("%s: %w", t.TicketRotation, ErrBadTicketRotation)
	}
	return nil
}

// OnChange registers fn to run after every successful swap (Apply, Reload,
// a file change) and when a CRL goes stale, so that live connections can be
// re-validated with Identify.
func (m *Manager) OnChange(fn func()) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.onChange = append(m.onChange, fn)
}

// TLS 1.2 suites: ECDHE and AEAD only. TLS 1.3 suites are all AEAD and not
// configurable.
var cipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// innerConfig is the per-generation config a listener's handshakes run on.
// It carries the listener's session-ticket keys ts: crypto/tls prefers the
// keys of the config GetConfigForClient returns, and callers that wrap our
// GetConfigForClient and clone its result still copy the current keys.
func (m *Manager) innerConfig(ls *listenerState, settings policy.TLS, ts *ticketSet) *tls.Config {
	name := ls.name
	c := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		CipherSuites:   cipherSuites,
		GetCertificate: ls.certificate,
		// Any certificate is requested and the chain is verified in
		// VerifyConnection, which runs on resumed sessions too and can tell
		// unknown_ca from expired or revoked. ClientCAs stays nil on
		// purpose: it would list every tenant's CA name in the
		// CertificateRequest to anyone who connects, disclosing who the
		// customers are. An empty list means "any CA" to clients.
		ClientAuth: tls.RequireAnyClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return m.verifyConnection(name, cs)
		},
		Time:                   m.now,
		SessionTicketsDisabled: settings.SessionTicketsDisabled,
	}
	if ts != nil && !settings.SessionTicketsDisabled {
		c.SetSessionTicketKeys(ts.keys)
	}
	return c
}

// TLSConfig returns the server config for a listener. It stays valid across
// reloads: every handshake reads the current generation, and fails when the
// listener no longer exists. NextProtos set on the returned config before use
// are offered on every handshake.
func (m *Manager) TLSConfig(listener string) (*tls.Config, error) {
	if _, ok := m.state.Load().listeners[listener]; !ok {
		return nil, fmt.Errorf("tls config %q: %w", listener, ErrUnknownListener)
	}
	outer := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		CipherSuites: cipherSuites,
		ClientAuth:   tls.RequireAnyClientCert,
	}
	outer.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		ls, ok := m.state.Load().listeners[listener]
		if !ok {
			return nil, fmt.Errorf("listener %q: %w", listener, ErrUnknownListener)
		}
		if len(outer.NextProtos) == 0 {
			return ls.config, nil
		}
		// A clone per handshake costs about a microsecond, nothing beside
		// the handshake, and always carries the current ticket keys.
		c := ls.config.Clone()
		c.NextProtos = outer.NextProtos
		return c, nil
	}
	return outer, nil
}

// verifyConnection refuses a certificate the current generation does not
// accept; the listener logs the refusal with HandshakeFailed's Refusal. It
// counts refusals only: crypto/tls calls it before it checks the client's
// CertificateVerify, so an accepted certificate is no proof yet that the
// client holds its key, and ok is counted by HandshakeDone.
func (m *Manager) verifyConnection(listener string, cs tls.ConnectionState) error {
	_, err := m.authorizeOn(m.state.Load(), listener, cs.PeerCertificates)
	if err != nil {
		err.counted = true
		m.count(listener, err.Tenant, err.Result)
		return err
	}
	return nil
}

// authorizeOn is authorize for a handshake of the listener, which the
// generation must still have; a refusal carries the client's certificate.
func (m *Manager) authorizeOn(st *state, listener string, chain []*x509.Certificate) (Peer, *AuthError) {
	if _, ok := st.listeners[listener]; !ok {
		return Peer{}, (&AuthError{Result: ResultOther, Detail: "listener " + listener + " removed"}).withLeaf(chain)
	}
	id, err := m.authorize(st, chain)
	if err != nil {
		return Peer{}, err.withLeaf(chain)
	}
	return id, nil
}

// HandshakeDone is told of a handshake of the listener from source that
// completed, and returns who the client is. Only a completed handshake
// proves that the client holds its certificate's key, so this is where ok
// is counted. The certificate is authorised again against the generation
// in force: one a reload refuses since VerifyConnection is counted and
// remembered as a refusal, and returned as the error. The Peer names the
// listener, source and server name besides the certificate's identity.
func (m *Manager) HandshakeDone(listener string, source netip.AddrPort, cs tls.ConnectionState) (Peer, error) {
	id, err := m.authorizeOn(m.state.Load(), listener, cs.PeerCertificates)
	if err != nil {
		m.refused(listener, source, cs, err)
		return Peer{}, err
	}
	m.count(listener, id.Tenant, ResultOK)
	id.Listener, id.Source, id.ServerName = listener, source, cs.ServerName
	return id, nil
}

// Identify re-checks the connection's client certificate against the
// current generation (CAs, CRLs, identities, validity) and returns its
// tenant: a Peer of the certificate alone (no listener or source).
// Proxies call it for live connections after OnChange.
func (m *Manager) Identify(cs tls.ConnectionState) (Peer, error) {
	id, err := m.authorize(m.state.Load(), cs.PeerCertificates)
	if err != nil {
		return Peer{}, err
	}
	return id, nil
}

func classifyHandshakeError(err error) Result {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return ResultClientClosed
	}
	s := err.Error()
	switch {
	case strings.Contains(s, "didn't provide a certificate"):
		return ResultNoCert
	case strings.Contains(s, "unsupported versions"), strings.Contains(s, "protocol version"),
		strings.Contains(s, "unsupported SSLv2"):
		return ResultProtocolVersion
	}
	var ae tls.AlertError
	if errors.As(err, &ae) && uint8(ae) == 70 { // protocol_version
		return ResultProtocolVersion
	}
	return ResultOther
}

func (m *Manager) count(listener, tenant string, r Result) {
	if tenant == "" {
		tenant = noTenant
	}
	m.handshakes.WithLabelValues(listener, tenant, string(r)).Inc()
}

// Describe implements prometheus.Collector.
func (m *Manager) Describe(ch chan<- *prometheus.Desc) {
	m.handshakes.Describe(ch)
	ch <- m.expiryDesc
}

// Collect implements prometheus.Collector.
func (m *Manager) Collect(ch chan<- prometheus.Metric) {
	m.handshakes.Collect(ch)
	st := m.state.Load()
	// One series per configured certificate: the default one is named
	// after the listener, the extra ones after the listener and their first
	// DNS name, which Apply keeps unique per listener.
	for _, ls := range st.listeners {
		for _, c := range ls.certs {
			ch <- prometheus.MustNewConstMetric(m.expiryDesc, prometheus.GaugeValue,
				float64(c.tls.Leaf.NotAfter.Unix()), "server", c.metric)
		}
	}
	for _, t := range st.tenants {
		first := t.roots[0].NotAfter
		for _, ca := range append(t.roots[1:], t.inters...) {
			if ca.NotAfter.Before(first) {
				first = ca.NotAfter
			}
		}
		ch <- prometheus.MustNewConstMetric(m.expiryDesc, prometheus.GaugeValue, float64(first.Unix()), "tenant_ca", t.id)
		var next time.Time
		for _, c := range t.crls {
			if nu := c.list.NextUpdate; !nu.IsZero() && (next.IsZero() || nu.Before(next)) {
				next = nu
			}
		}
		if !next.IsZero() {
			ch <- prometheus.MustNewConstMetric(m.expiryDesc, prometheus.GaugeValue,
				float64(next.Unix()), "crl_next_update", t.id)
		}
	}
}

// Close stops nothing that runs on its own (Watch ends with its context); it
// exists for the daemon's uniform component shape.
func (m *Manager) Close() error { return nil }
