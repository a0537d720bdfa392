package httpproxy

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/proxy/relay"
)

// Errors returned by New.
var (
	ErrProtocol = errors.New("listener protocol is neither https nor soap")
	ErrRoute    = errors.New("invalid route")
)

type peerKey struct{}

// WithPeer returns ctx carrying the connection's peer, as the TLS layer
// proved it; its Tenant is the only input routing trusts.
func WithPeer(ctx context.Context, p certs.Peer) context.Context {
	return context.WithValue(ctx, peerKey{}, p)
}

// PeerFrom returns the peer WithPeer stored.
func PeerFrom(ctx context.Context) (certs.Peer, bool) {
	p, ok := ctx.Value(peerKey{}).(certs.Peer)
	return p, ok && p.Tenant != ""
}

// Config configures a Handler for one listener generation.
type Config struct {
	// Listener is the compiled listener: its name, protocol, routes, and
	// limits (Listener.ForTenant gives each tenant's).
	Listener policy.Listener
	// InFlight counts requests per tenant. Pass the same one to every
	// generation of a listener so a reload does not reset the count; nil
	// makes a new one.
	InFlight *InFlight
	Metrics  *Metrics // nil: not counted
	// Previous is the listener's running generation, if any: a backend
	// it knows as down (same tenant, route and URL) stays down, so a
	// reload does not send requests to hosts known to fail.
	Previous  *Handler
	AccessLog *slog.Logger
	Logger    *slog.Logger
	// Descriptors, when set, counts every backend connection and refuses
	// new ones while the process is within its descriptor reserve: the
	// request gets 503.
	Descriptors *relay.Descriptors
}

// Handler proxies one listener's requests. It is immutable once built; a new
// policy generation builds a new Handler.
type Handler struct {
	listener string
	soap     bool
	engine   string        // EngineStd or EngineFast
	limits   requestLimits // the listener's own, resolved over the defaults
	base     *tenantLimits
	tenants  map[string]*tenantLimits      // tenants whose limits differ from base
	byTenant map[policy.TenantEnv][]*route // by the (tenant, environment) they serve
	inFlight *InFlight
	metrics  *Metrics
	series   map[policy.TenantEnv]*series // its routes' (tenant, environment)s and "-"; read-only
	access   *slog.Logger
	logger   *slog.Logger
	fds      *relay.Descriptors

	// Active health checks: started by Start, stopped by Close.
	stop      context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// New builds the handler of a listener that policy.CheckListeners passed
// (it does not judge routes again): every backend URL parsed, every
// backend CA and client certificate loaded. Any error leaves nothing
// behind.
func New(cfg Config) (*Handler, error) {
	l := cfg.Listener
	if l.Protocol != policy.ProtoHTTPS && l.Protocol != policy.ProtoSOAP {
		return nil, fmt.Errorf("listener %q: %w: %q", l.Name, ErrProtocol, l.Protocol)
	}
	base := defaultLimits()
	h := &Handler{
		listener: l.Name,
		soap:     l.Protocol == policy.ProtoSOAP,
		engine:   l.Limits.HTTP.Engine,
		limits:   base.withPolicy(l.Limits.HTTP),
		base:     resolveLimits(base, l.Limits),
		tenants:  map[string]*tenantLimits{},
		byTenant: map[policy.TenantEnv][]*route{},
		inFlight: cfg.InFlight,
		metrics:  cfg.Metrics,
		access:   cfg.AccessLog,
		logger:   cfg.Logger,
		fds:      cfg.Descriptors,
	}
	if h.inFlight == nil {
		h.inFlight = NewInFlight()
	}
	if h.access == nil {
		h.access = slog.New(slog.DiscardHandler)
	}
	if h.logger == nil {
		h.logger = slog.New(slog.DiscardHandler)
	}
	for tenant, tl := range l.TenantLimits {
		h.tenants[tenant] = resolveLimits(base, tl)
	}
	for i, pr := range l.Routes {
		rt, err := h.newRoute(i, pr)
		if err != nil {
			h.Close()
			return nil, fmt.Errorf("listener %q route %d: %w", l.Name, i, err)
		}
		rt.key = pr.Key(l.Name, l.Protocol)
		h.byTenant[pr.Env()] = append(h.byTenant[pr.Env()], rt)
	}
	if cfg.Previous != nil {
		h.inherit(cfg.Previous)
	}
	if h.metrics != nil {
		none := policy.TenantEnv{Tenant: "-", Environment: "-"}
		h.series = map[policy.TenantEnv]*series{none: h.metrics.series(h.listener, none)}
		for who := range h.byTenant {
			h.series[who] = h.metrics.series(h.listener, who)
		}
	}
	for _, rts := range h.byTenant {
		// Most specific first: longest prefix, then a named host before "any".
		slices.SortStableFunc(rts, func(a, b *route) int {
			if c := cmp.Compare(len(b.prefix), len(a.prefix)); c != 0 {
				return c
			}
			return cmp.Compare(len(b.host), len(a.host))
		})
	}
	return h, nil
}

// Start begins the active health checks of the routes that have a health
// path, one goroutine per backend, each checking at once and then every
// interval, and makes the backends visible in the metrics. Call it once,
// when the handler is put in service; Close stops it.
func (h *Handler) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	h.stop = cancel
	for _, rts := range h.byTenant {
		for _, rt := range rts {
			for _, b := range rt.backends {
				if b.health != nil {
					h.wg.Add(1)
					go h.watch(ctx, rt, b)
				}
			}
		}
	}
	if h.metrics != nil {
		h.metrics.add(h)
	}
}

// Close stops the health checks, waiting for them, and releases the idle
// backend connections of this generation; requests still running finish on
// theirs (with the health their backends had).
func (h *Handler) Close() {
	h.closeOnce.Do(func() {
		if h.stop != nil {
			h.stop()
			h.wg.Wait()
		}
		if h.metrics != nil {
			h.metrics.remove(h)
		}
		for _, rts := range h.byTenant {
			for _, rt := range rts {
				for _, b := range rt.backends {
					b.transport.CloseIdleConnections()
					if b.direct != nil {
						b.direct.CloseIdleConnections()
					}
				}
			}
		}
	})
}

// requestState travels with one request through the proxy.
type requestState struct {
	peer certs.Peer
	lim  *tenantLimits // the peer's tenant's
	id   string
	// inURL is the client's URL, for aiming it at each backend tried.
	inURL url.URL
	// backend is the index of the last backend tried, -1 none; attempts
	// counts the backends tried. Only the handler's goroutine writes them.
	backend  int
	attempts int
	// bodyErr is the first read error of the client's body (bad chunking,
	// over the limit). The transport reads the body on its own goroutine.
	bodyErr atomic.Pointer[error]
	// body is the client's body, nil without one; buffered, what of it
	// was read ahead into memory (closed when the request ends).
	body     *countingBody
	buffered *bufferedBody
}

func (st *requestState) bodyError() error {
	if p := st.bodyErr.Load(); p != nil {
		return *p
	}
	return nil
}

type stateKey struct{}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	// The framing guard stops reading HTTP once a connection asks to switch
	// protocols; unless the switch happens, end the connection after the
	// answer (whoever refuses it) so nothing follows unguarded.
	// The guard steps aside on any Upgrade header, with or without
	// "Connection: upgrade", so that decides here, and so does
	// "Connection: upgrade" alone: a request that asks to switch is
	// answered last on its connection either way.
	sw := &statusWriter{ResponseWriter: w, closeUnlessSwitch: r.ProtoMajor == 1 &&
		(r.Header.Get("Upgrade") != "" || hasToken(r.Header.Values("Connection"), "upgrade"))}
	peer, ok := PeerFrom(r.Context())
	st := &requestState{id: newID(), backend: -1, peer: peer, lim: h.limitsOf(peer.Tenant)}
	var body *countingBody
	if r.Body != nil && r.Body != http.NoBody {
		body = &countingBody{rc: http.MaxBytesReader(sw, r.Body, st.lim.MaxBodyBytes), st: st,
			ctl: http.NewResponseController(w), idle: st.lim.BodyReadTimeout}
		r.Body = body
		st.body = body
	}
	rt := h.serve(sw, r, st, ok)
	if st.buffered != nil {
		st.buffered.Close() // its memory back to the listener's budget, whoever answered
	}
	if body != nil && !body.eof.Load() {
		// Refused, or answered without reading the body: net/http would
		// try to drain what is left, waiting on the client without bound.
		// Give up on the rest instead; the connection closes after the
		// answer.
		body.ctl.SetReadDeadline(time.Now())
	}
	// A handler that wrote nothing gets net/http's implicit 200.
	status := cmp.Or(sw.status, http.StatusOK)
	var in int64
	if body != nil {
		in = body.n.Load()
	}
	label := "-"
	if rt != nil {
		label = rt.label
	}
	d := time.Since(start)
	who := policy.TenantEnv{Tenant: "-", Environment: "-"}
	if peer.Tenant != "" {
		who = peer.Env()
	}
	h.count(who, status, d)
	attrs := []slog.Attr{
		slog.String("id", st.id),
		slog.String("listener", h.listener),
		slog.String("tenant", who.Tenant),
		slog.String("environment", who.Environment),
		slog.String("fingerprint", peer.FingerprintSHA256),
		slog.String("source", peer.Source.String()),
		slog.String("proto", r.Proto),
		slog.String("method", r.Method),
		slog.String("route", label),
		slog.Int("backend", st.backend),
		slog.Int("attempts", st.attempts),
		slog.Int("status", status),
		slog.Int64("bytes_in", in),
		slog.Int64("bytes_out", sw.n),
		slog.Float64("duration_ms", float64(d.Microseconds())/1000),
	}
	if sw.reason != "" {
		// Why gatehouse answered itself instead of a backend.
		attrs = append(attrs, slog.String("reason", sw.reason))
	}
	if sw.up != nil && sw.up.t != nil {
		attrs = h.tunnelEnded(sw.up, attrs)
	}
	h.access.LogAttrs(r.Context(), slog.LevelInfo, "request", attrs...)
}

// serve answers the request and returns the route it took, if any.
func (h *Handler) serve(w *statusWriter, r *http.Request, st *requestState, authed bool) *route {
	if !authed {
		// Unreachable through the listener (no tenant, no connection), but
		// the handler must not trust its caller: fail closed.
		refuse(w, http.StatusForbidden, "forbidden: no tenant")
		return nil
	}
	if limit := h.limits.MaxHeaderBytes; limit > 0 && headSize(r) > limit {
		// The listener's limit: the head was read before the tenant was
		// looked at.
		refuse(w, http.StatusRequestHeaderFieldsTooLarge, "request header fields too large")
		return nil
	}
	if r.Method == http.MethodConnect {
		refuse(w, http.StatusBadRequest, "bad request: CONNECT")
		return nil
	}
	// Routed on the path exactly as it will be forwarded.
	p, params, why := routingPath(r.URL.EscapedPath())
	if why != "" {
		refuse(w, http.StatusBadRequest, why)
		return nil
	}
	host := policy.NormHost(r.Host)
	if host == "" {
		host = policy.NormHost(st.peer.ServerName)
	}
	rt := h.match(st.peer.Env(), host, p)
	if rt == nil {
		refuse(w, http.StatusForbidden, "forbidden: no route")
		return nil
	}
	if params && !rt.pathParams {
		refuse(w, http.StatusBadRequest, pathParams)
		return rt
	}
	if r.ContentLength > st.lim.MaxBodyBytes {
		refuse(w, http.StatusRequestEntityTooLarge, "request body too large")
		return rt
	}
	if code, why := h.upgradeRefusal(r, rt); why != "" {
		refuse(w, code, why)
		return rt
	}
	if !connectionOptionsOK(r.Header) {
		refuse(w, http.StatusBadRequest, badConnection)
		return rt
	}
	release, ok := h.inFlight.acquire(h.listener, st.peer.Tenant, st.lim.MaxInFlightPerTenant)
	if !ok {
		w.Header().Set("Retry-After", "1")
		refuse(w, http.StatusServiceUnavailable, "too many requests in flight")
		return rt
	}
	release = sync.OnceFunc(release) // or at the protocol switch, see upgrade
	defer release()
	if w.closeUnlessSwitch {
		hook, _ := r.Context().Value(upgradeHookKey{}).(UpgradeHook)
		w.up = &upgrade{h: h, rt: rt, st: st, hook: hook, release: release}
	}
	// SOAP reads the whole body anyway, to inspect it.
	if rt.soap && !h.checkSOAP(w, r, rt, st) || !rt.soap && !h.bufferBody(w, r, st) {
		return rt
	}
	h.dropHeaders(r, st)
	r = r.WithContext(context.WithValue(r.Context(), stateKey{}, st))
	rt.proxy.ServeHTTP(w, r)
	return rt
}

// proxyError answers a failed round trip: 503 when the backend switched
// protocols on a route a reload removed meanwhile; 413, 408 or 400 when the
// client's body failed (over the limit, stalled, malformed); 499 when the
// client went away; 502 when no backend is up or the backend failed; 504
// when it did not answer in time.
func (h *Handler) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	st, _ := r.Context().Value(stateKey{}).(*requestState)
	sw, _ := w.(*statusWriter)
	switch {
	case sw != nil && sw.up != nil && sw.up.refused != nil:
		// The backend switched protocols, but a reload removed or
		// changed the route meanwhile: no tunnel on a route not in force.
		w.Header().Set("Retry-After", "1")
		refuse(w, http.StatusServiceUnavailable, "upgrade refused: route changed by a reload")
	case st != nil && st.bodyError() != nil:
		refuseBody(w, st.bodyError())
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		// The client went away; nobody reads the answer.
		noteReason(w, "client gone")
		w.WriteHeader(499)
	case errors.Is(err, relay.ErrDescriptors):
		// The process keeps its last descriptors for the control plane;
		// the backend is fine.
		w.Header().Set("Retry-After", "1")
		refuse(w, http.StatusServiceUnavailable, "service unavailable: descriptor reserve reached")
	case errors.Is(err, errAllDown):
		h.logger.Warn("no backend up", "listener", h.listener)
		refuse(w, http.StatusBadGateway, "bad gateway: no backend available")
	case isTimeout(err):
		h.logger.Warn("backend timed out", "listener", h.listener, "err", err)
		refuse(w, http.StatusGatewayTimeout, "gateway timeout")
	default:
		h.logger.Warn("backend failed", "listener", h.listener, "err", err)
		refuse(w, http.StatusBadGateway, "bad gateway")
	}
}

// hasToken reports whether a comma-separated header holds tok, in any case.
func hasToken(values []string, tok string) bool {
	for _, v := range values {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), tok) {
				return true
			}
		}
	}
	return false
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

func newID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
