package httpproxy

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// Errors returned by New.
var (
	ErrProtocol = errors.New("listener protocol is neither https nor soap")
	ErrRoute    = errors.New("invalid route")
)

// Peer is the authenticated client of a connection, as the TLS layer proved
// it. Tenant is the only input routing trusts.
type Peer struct {
	Tenant      string
	Fingerprint string // hex SHA-256 of the client certificate
	Subject     string
	Source      netip.AddrPort
	SNI         string
}

type peerKey struct{}

// WithPeer returns ctx carrying the connection's peer.
func WithPeer(ctx context.Context, p Peer) context.Context {
	return context.WithValue(ctx, peerKey{}, p)
}

// PeerFrom returns the peer WithPeer stored.
func PeerFrom(ctx context.Context) (Peer, bool) {
	p, ok := ctx.Value(peerKey{}).(Peer)
	return p, ok && p.Tenant != ""
}

// Config configures a Handler for one listener generation.
type Config struct {
	Listener string
	Protocol policy.Protocol
	Routes   []policy.Route
	Limits   Limits
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
}

// Handler proxies one listener's requests. It is immutable once built; a new
// policy generation builds a new Handler.
type Handler struct {
	listener string
	soap     bool
	limits   Limits
	byTenant map[string][]*route
	inFlight *InFlight
	metrics  *Metrics
	access   *slog.Logger
	logger   *slog.Logger

	// Active health checks: started by Start, stopped by Close.
	stop      context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
}

type route struct {
	index     int // position in the listener's routes, the backend_up label
	tenant    string
	host      string // lower case, no port; "" matches any
	prefix    string
	label     string // host+prefix, the route's name in logs
	backends  []*backend
	interval  time.Duration // active health check period; 0 none
	proxy     *httputil.ReverseProxy
	actions   map[string]bool
	allowWSDL bool
	soap      bool
}

// New validates cfg and builds the handler: every backend URL parsed, every
// backend CA and client certificate loaded. Any error leaves nothing behind.
func New(cfg Config) (*Handler, error) {
	if cfg.Protocol != policy.ProtoHTTPS && cfg.Protocol != policy.ProtoSOAP {
		return nil, fmt.Errorf("listener %q: %w: %q", cfg.Listener, ErrProtocol, cfg.Protocol)
	}
	h := &Handler{
		listener: cfg.Listener,
		soap:     cfg.Protocol == policy.ProtoSOAP,
		limits:   cfg.Limits.withDefaults(),
		byTenant: map[string][]*route{},
		inFlight: cfg.InFlight,
		metrics:  cfg.Metrics,
		access:   cfg.AccessLog,
		logger:   cfg.Logger,
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
	seen := map[string]bool{}
	for i, pr := range cfg.Routes {
		rt, err := h.newRoute(i, pr)
		if err != nil {
			h.Close()
			return nil, fmt.Errorf("listener %q route %d: %w", cfg.Listener, i, err)
		}
		key := rt.tenant + "\x00" + rt.label
		if seen[key] {
			h.Close()
			return nil, fmt.Errorf("listener %q route %d: %w: tenant %q has two routes for %s", cfg.Listener, i, ErrRoute, rt.tenant, rt.label)
		}
		seen[key] = true
		h.byTenant[rt.tenant] = append(h.byTenant[rt.tenant], rt)
	}
	if cfg.Previous != nil {
		h.inherit(cfg.Previous)
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

func (h *Handler) newRoute(index int, pr policy.Route) (*route, error) {
	if pr.Tenant == "" {
		return nil, fmt.Errorf("%w: no tenant", ErrRoute)
	}
	addrs := pr.Backends
	switch {
	case len(addrs) == 0:
		addrs = []string{pr.Backend}
	case pr.Backend != "" && pr.Backend != addrs[0]:
		return nil, fmt.Errorf("%w: backend %q is not the first of backends", ErrRoute, pr.Backend)
	}
	var urls []*url.URL
	for _, addr := range addrs {
		u, err := url.Parse(addr)
		if err != nil {
			return nil, fmt.Errorf("%w: backend %q: %w", ErrRoute, addr, err)
		}
		if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
			return nil, fmt.Errorf("%w: backend %q must be http(s)://host[:port][/path]", ErrRoute, addr)
		}
		if slices.ContainsFunc(urls, func(o *url.URL) bool { return o.String() == u.String() }) {
			return nil, fmt.Errorf("%w: backend %q listed twice", ErrRoute, addr)
		}
		urls = append(urls, u)
	}
	if pr.HealthPath == "" && pr.HealthInterval != 0 {
		return nil, fmt.Errorf("%w: health interval without a health path", ErrRoute)
	}
	if pr.HealthPath != "" && pr.HealthInterval <= 0 {
		return nil, fmt.Errorf("%w: health path %q needs a positive interval", ErrRoute, pr.HealthPath)
	}
	prefix := cmp.Or(pr.Path, "/")
	if !strings.HasPrefix(prefix, "/") || hasDotSegment(prefix) {
		return nil, fmt.Errorf("%w: path %q must be an absolute clean path", ErrRoute, pr.Path)
	}
	host := normHost(pr.Host)
	rt := &route{
		index:     index,
		tenant:    pr.Tenant,
		host:      host,
		prefix:    prefix,
		label:     host + prefix,
		interval:  pr.HealthInterval,
		allowWSDL: pr.AllowWSDL,
		soap:      h.soap,
		actions:   map[string]bool{},
	}
	for _, a := range pr.SOAPActions {
		rt.actions[a] = true
	}
	tc, err := backendTLS(urls, pr)
	if err != nil {
		return nil, err
	}
	for i, u := range urls {
		b := &backend{index: i, url: u, transport: h.newTransport(u, tc)}
		if pr.HealthPath != "" {
			if b.health, err = healthURL(u, pr.HealthPath); err != nil {
				return nil, err
			}
			b.client = &http.Client{
				Transport: b.transport,
				// A redirect passes; following it would check another host.
				CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
			}
		}
		rt.backends = append(rt.backends, b)
	}
	rt.proxy = &httputil.ReverseProxy{
		Rewrite:      rt.rewrite,
		Transport:    &pool{h: h, rt: rt, backends: rt.backends},
		ErrorHandler: h.proxyError,
		// Zero: a response of known length goes out in as few writes as
		// possible; ReverseProxy still flushes every write at once for a
		// response without a length (chunked, long-polled) and for
		// text/event-stream, so streams are not held back.
		FlushInterval: 0,
		BufferPool:    copyBuffers,
		ErrorLog:      slog.NewLogLogger(h.logger.Handler(), slog.LevelWarn),
	}
	return rt, nil
}

// backendTLS loads the route's backend CA and client certificate once for
// all its backends; nil when no backend is https.
func backendTLS(urls []*url.URL, pr policy.Route) (*tls.Config, error) {
	if !slices.ContainsFunc(urls, func(u *url.URL) bool { return u.Scheme == "https" }) {
		if err := pr.CheckPlainBackend(); err != nil {
			return nil, fmt.Errorf("%w: %w (an https backend)", ErrRoute, err)
		}
		return nil, nil
	}
	tc, err := pr.BackendTLSConfig("") // ServerName per backend, in newTransport
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRoute, err)
	}
	return tc, nil
}

func (h *Handler) newTransport(u *url.URL, tc *tls.Config) *http.Transport {
	d := &net.Dialer{Timeout: h.limits.DialTimeout, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		Proxy:                 nil, // never an environment proxy: backends are internal
		DialContext:           d.DialContext,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   h.limits.DialTimeout,
		ResponseHeaderTimeout: h.limits.BackendTimeout,
		ExpectContinueTimeout: time.Second,
	}
	if u.Scheme == "https" {
		tc = tc.Clone()
		tc.ServerName = u.Hostname()
		tr.TLSClientConfig = tc
	}
	return tr
}

// inherit copies the health of prev's backends into h's matching ones.
func (h *Handler) inherit(prev *Handler) {
	for tenant, rts := range h.byTenant {
		for _, rt := range rts {
			i := slices.IndexFunc(prev.byTenant[tenant], func(o *route) bool { return o.label == rt.label })
			if i < 0 {
				continue
			}
			for _, b := range rt.backends {
				for _, o := range prev.byTenant[tenant][i].backends {
					if o.url.String() == b.url.String() {
						b.copyHealth(o)
					}
				}
			}
		}
	}
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
				}
			}
		}
	})
}

// match returns the tenant's most specific route for host and path. The
// tenant comes from the certificate; nothing in the request can select
// another tenant's routes.
func (h *Handler) match(tenant, host, p string) *route {
	for _, rt := range h.byTenant[tenant] {
		if rt.host != "" && rt.host != host {
			continue
		}
		if pathHasPrefix(p, rt.prefix) {
			return rt
		}
	}
	return nil
}

func pathHasPrefix(p, prefix string) bool {
	if !strings.HasPrefix(p, prefix) {
		return false
	}
	return len(p) == len(prefix) || strings.HasSuffix(prefix, "/") || p[len(prefix)] == '/'
}

func hasDotSegment(p string) bool {
	for seg := range strings.SplitSeq(p, "/") {
		if seg == "." || seg == ".." {
			return true
		}
	}
	return strings.Contains(p, `\`)
}

func normHost(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		h = host
	}
	return strings.TrimSuffix(strings.ToLower(h), ".")
}

// requestState travels with one request through the proxy.
type requestState struct {
	peer Peer
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
	// "Connection: upgrade", so the same condition decides here.
	sw := &statusWriter{ResponseWriter: w, closeUnlessSwitch: r.ProtoMajor == 1 && r.Header.Get("Upgrade") != ""}
	st := &requestState{id: newID(), backend: -1}
	peer, ok := PeerFrom(r.Context())
	st.peer = peer
	var body *countingBody
	if r.Body != nil && r.Body != http.NoBody {
		body = &countingBody{rc: http.MaxBytesReader(sw, r.Body, h.maxBody()), st: st,
			ctl: http.NewResponseController(w), idle: h.limits.BodyReadTimeout}
		r.Body = body
	}
	rt := h.serve(sw, r, st, ok)
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
	tenant := cmp.Or(peer.Tenant, "-")
	if h.metrics != nil {
		h.metrics.requests.WithLabelValues(h.listener, tenant, strconv.Itoa(status)).Inc()
		h.metrics.duration.WithLabelValues(h.listener, tenant).Observe(d.Seconds())
	}
	attrs := []slog.Attr{
		slog.String("id", st.id),
		slog.String("listener", h.listener),
		slog.String("tenant", tenant),
		slog.String("fingerprint", peer.Fingerprint),
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
	h.access.LogAttrs(r.Context(), slog.LevelInfo, "request", attrs...)
}

func (h *Handler) maxBody() int64 {
	if h.soap {
		return max(h.limits.MaxBodyBytes, h.limits.XML.MaxBytes)
	}
	return h.limits.MaxBodyBytes
}

// serve answers the request and returns the route it took, if any.
func (h *Handler) serve(w *statusWriter, r *http.Request, st *requestState, authed bool) *route {
	if !authed {
		// Unreachable through the listener (no tenant, no connection), but
		// the handler must not trust its caller: fail closed.
		refuse(w, http.StatusForbidden, "forbidden: no tenant")
		return nil
	}
	if r.Method == http.MethodConnect || !strings.HasPrefix(r.URL.Path, "/") || hasDotSegment(r.URL.Path) {
		refuse(w, http.StatusBadRequest, "bad request: path")
		return nil
	}
	host := normHost(r.Host)
	if host == "" {
		host = normHost(st.peer.SNI)
	}
	rt := h.match(st.peer.Tenant, host, r.URL.Path)
	if rt == nil {
		refuse(w, http.StatusForbidden, "forbidden: no route")
		return nil
	}
	if r.ContentLength > h.maxBody() {
		refuse(w, http.StatusRequestEntityTooLarge, "request body too large")
		return rt
	}
	if w.closeUnlessSwitch && hasToken(r.Header.Values("Upgrade"), "h2c") {
		// Cleartext HTTP/2 to the backend would carry later requests past
		// routing, inside one tunnel.
		refuse(w, http.StatusBadRequest, "bad request: h2c upgrade")
		return rt
	}
	release, ok := h.inFlight.acquire(h.listener, st.peer.Tenant, h.limits.MaxInFlightPerTenant)
	if !ok {
		w.Header().Set("Retry-After", "1")
		refuse(w, http.StatusServiceUnavailable, "too many requests in flight")
		return rt
	}
	defer release()
	if rt.soap {
		if !h.checkSOAP(w, r, rt, st) {
			return rt
		}
	}
	r = r.WithContext(context.WithValue(r.Context(), stateKey{}, st))
	rt.proxy.ServeHTTP(w, r)
	return rt
}

// identityHeaders are names backends trust for who is calling or which URL
// was asked for. Whatever the client sent under these names, under any
// X-Forwarded-* name, or under look-alikes a backend could fold into them
// (underscores, any case), is dropped before ours are set.
var identityHeaders = []string{
	"forwarded", "x-real-ip", "true-client-ip", "x-client-ip", "x-cluster-client-ip",
	"x-original-forwarded-for", "x-original-url", "x-rewrite-url",
}

func isIdentityHeader(name string) bool {
	n := strings.ToLower(strings.ReplaceAll(name, "_", "-"))
	return slices.Contains(identityHeaders, n) || strings.HasPrefix(n, "x-forwarded-") ||
		strings.HasPrefix(n, "x-gatehouse-") || strings.HasPrefix(n, "x-client-cert")
}

func (rt *route) rewrite(pr *httputil.ProxyRequest) {
	st, _ := pr.In.Context().Value(stateKey{}).(*requestState)
	if st != nil && len(rt.backends) > 1 {
		st.inURL = *pr.Out.URL
	}
	pr.SetURL(rt.backends[0].url)
	for name := range pr.Out.Header {
		if isIdentityHeader(name) {
			delete(pr.Out.Header, name)
		}
	}
	if st == nil {
		return // unreachable: serve always sets it; send no identity rather than a wrong one
	}
	hdr := pr.Out.Header
	hdr.Set("X-Forwarded-For", st.peer.Source.Addr().Unmap().String())
	hdr.Set("X-Forwarded-Proto", "https")
	if pr.In.Host != "" {
		hdr.Set("X-Forwarded-Host", headerSafe(pr.In.Host))
	}
	hdr.Set("X-Gatehouse-Tenant", st.peer.Tenant)
	hdr.Set("X-Client-Cert-Fingerprint", st.peer.Fingerprint)
	hdr.Set("X-Client-Cert-Subject", headerSafe(st.peer.Subject))
	// The access log's id, so the backend's logs can be matched with ours.
	hdr.Set("X-Gatehouse-Request-Id", st.id)
}

// headerSafe keeps printable ASCII; anything else becomes '?', so a
// certificate subject can never break the header block.
func headerSafe(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return '?'
		}
		return r
	}, s)
}

// proxyError answers a failed round trip: 413 or 400 when the client's body
// was at fault, 502 otherwise (backend refused, reset, timed out).
func (h *Handler) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	st, _ := r.Context().Value(stateKey{}).(*requestState)
	var mbe *http.MaxBytesError
	switch {
	case st != nil && errors.As(st.bodyError(), &mbe):
		refuse(w, http.StatusRequestEntityTooLarge, "request body too large")
	case st != nil && isTimeout(st.bodyError()):
		refuse(w, http.StatusRequestTimeout, "request body timed out")
	case st != nil && st.bodyError() != nil:
		refuse(w, http.StatusBadRequest, "bad request body")
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		// The client went away; nobody reads the answer.
		noteReason(w, "client gone")
		w.WriteHeader(499)
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

// refuse answers the request itself with code and msg; msg is also the
// access log's reason.
func refuse(w http.ResponseWriter, code int, msg string) {
	noteReason(w, msg)
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	io.WriteString(w, msg+"\n")
}

func newID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// statusWriter remembers the status and counts the body bytes written.
// Unwrap lets http.ResponseController reach Flush and Hijack underneath.
type statusWriter struct {
	http.ResponseWriter
	status            int
	n                 int64
	closeUnlessSwitch bool   // an HTTP/1 upgrade request: close unless it gets 101
	reason            string // why gatehouse answered itself, for the access log
}

// noteReason records the first reason the request was answered without a
// backend's response.
func noteReason(w http.ResponseWriter, reason string) {
	if sw, ok := w.(*statusWriter); ok && sw.reason == "" {
		sw.reason = reason
	}
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 || (w.status < 200 && code >= 100) {
		w.status = code
	}
	if w.closeUnlessSwitch && code >= 200 {
		w.Header().Set("Connection", "close")
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// countingBody counts what the client sent and remembers why reading it
// failed, so a bad chunk or an oversize body is answered as the client's
// fault, not the backend's.
type countingBody struct {
	rc   io.ReadCloser
	st   *requestState
	n    atomic.Int64
	ctl  *http.ResponseController
	idle time.Duration
	eof  atomic.Bool
}

func (b *countingBody) Read(p []byte) (int, error) {
	// Each read may wait idle long. The deadline is lifted once the body
	// ends, so a slow backend answer does not trip it; after a failed
	// body it is moved to now, so net/http's attempt to drain the rest
	// (when the transport closes the body) cannot hang on a stalled
	// client, and the connection, out of step now, is closed.
	b.ctl.SetReadDeadline(time.Now().Add(b.idle))
	n, err := b.rc.Read(p)
	b.n.Add(int64(n))
	switch {
	case err == io.EOF:
		b.eof.Store(true)
		b.ctl.SetReadDeadline(time.Time{})
	case err != nil:
		b.ctl.SetReadDeadline(time.Now())
		first := err // its own variable: &err would move err to the heap on every Read
		b.st.bodyErr.CompareAndSwap(nil, &first)
	}
	return n, err
}

func (b *countingBody) Close() error { return b.rc.Close() }

// copyBuffers recycles the 32 KiB buffers of response copies, which
// ReverseProxy would otherwise allocate per request.
var copyBuffers = &bufferPool{p: sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}

type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte  { return *b.p.Get().(*[]byte) }
func (b *bufferPool) Put(s []byte) { b.p.Put(&s) }

// InFlight counts requests in flight per listener and tenant.
type InFlight struct {
	mu sync.Mutex
	m  map[[2]string]int
}

// NewInFlight returns an empty counter.
func NewInFlight() *InFlight { return &InFlight{m: map[[2]string]int{}} }

func (f *InFlight) acquire(listener, tenant string, limit int) (release func(), ok bool) {
	k := [2]string{listener, tenant}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m[k] >= limit {
		return nil, false
	}
	f.m[k]++
	return func() {
		f.mu.Lock()
		if f.m[k]--; f.m[k] <= 0 {
			delete(f.m, k)
		}
		f.mu.Unlock()
	}, true
}
