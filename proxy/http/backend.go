package httpproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatehouse-dmz/gatehouse/proxy/relay"
)

// errAllDown is a round trip refused because every backend of the route is
// marked down: the client gets 502 at once instead of waiting on hosts
// known to fail.
var errAllDown = errors.New("every backend of the route is down")

// backend is one internal host of a route and what the proxy knows of its
// health. A backend is usable unless the active check failed it, or a
// request failed on it and its back-off has not ended yet.
type backend struct {
	index     int
	url       *url.URL
	transport *http.Transport
	direct    *directTransport // the fast engine's; nil under std
	health    *url.URL         // nil: no active check
	client    *http.Client     // for the active check

	// downUntil is the end of the passive back-off in Unix nanoseconds;
	// zero when the last request succeeded.
	downUntil  atomic.Int64
	activeDown atomic.Bool
	mu         sync.Mutex
	fails      int // consecutive passive failures, for the back-off
}

func (b *backend) usable(now time.Time) bool {
	return !b.activeDown.Load() && b.downUntil.Load() <= now.UnixNano()
}

// failed starts or lengthens the passive back-off: base after the first
// failure, doubling up to most. A backend already down is left alone, so
// the requests that were in flight when it failed count once.
func (b *backend) failed(now time.Time, base, most time.Duration) (time.Duration, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.downUntil.Load() > now.UnixNano() {
		return 0, false
	}
	d := most
	if b.fails < 16 {
		d = min(base<<b.fails, most)
	}
	b.fails++
	b.downUntil.Store(now.Add(d).UnixNano())
	return d, true
}

// succeeded ends the passive back-off; it reports whether there was one.
func (b *backend) succeeded() bool {
	if b.downUntil.Load() == 0 {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.fails = 0
	return b.downUntil.Swap(0) != 0
}

// copyHealth takes over o's passive and active state.
func (b *backend) copyHealth(o *backend) {
	o.mu.Lock()
	fails, until := o.fails, o.downUntil.Load()
	o.mu.Unlock()
	b.mu.Lock()
	b.fails = fails
	b.downUntil.Store(until)
	b.mu.Unlock()
	b.activeDown.Store(o.activeDown.Load())
}

// pool is a route's http.RoundTripper: it picks a usable backend round
// robin and, when the failure shows the request never left the proxy (or
// the request may be sent twice), tries the next one.
type pool struct {
	h        *Handler
	rt       *route
	backends []*backend
	next     atomic.Uint32
}

func (p *pool) RoundTrip(req *http.Request) (*http.Response, error) {
	st, _ := req.Context().Value(stateKey{}).(*requestState)
	if st == nil {
		// Unreachable: serve always sets it. Without it the request's
		// URL cannot be aimed at another backend.
		return nil, errors.New("request without state")
	}
	if len(p.backends) == 1 {
		// Nothing to fail over to: always try, and keep the passive
		// state for the backend_up series only.
		b := p.backends[0]
		st.backend, st.attempts = 0, 1
		resp, err := b.roundTrip(req)
		p.observe(b, req, st, err, true, false)
		return resp, err
	}
	n := uint32(len(p.backends))
	start := p.next.Add(1) - 1
	var lastErr error
	for i := range n {
		b := p.backends[(start+i)%n]
		if !b.usable(time.Now()) {
			continue
		}
		var connected, reused atomic.Bool
		ctx := httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
			GotConn: func(ci httptrace.GotConnInfo) {
				connected.Store(true)
				reused.Store(ci.Reused)
			},
		})
		out := req.WithContext(ctx)
		out.URL = targetURL(b.url, st.inURL)
		if req.Body != nil && req.Body != http.NoBody {
			// The transport closes the body when it cannot connect;
			// the next backend still needs it. ReverseProxy closes
			// the real body when the request ends.
			out.Body = keepOpen{req.Body}
		}
		st.backend = b.index
		st.attempts++
		resp, err := b.roundTrip(out)
		if err == nil {
			p.observe(b, req, st, nil, true, false)
			return resp, nil
		}
		if !p.observe(b, req, st, err, connected.Load(), reused.Load()) {
			return nil, err // the client's fault, or its own cancel
		}
		lastErr = err
		if !retrySafe(req, err, connected.Load()) {
			return nil, err
		}
	}
	if lastErr != nil {
		return nil, lastErr
	}
	return nil, errAllDown
}

// roundTrip sends req to b with the listener's engine.
func (b *backend) roundTrip(req *http.Request) (*http.Response, error) {
	if b.direct != nil && req.ProtoMajor == 1 {
		return b.direct.RoundTrip(req)
	}
	return b.transport.RoundTrip(req)
}

// observe updates b's passive state after a round trip. It reports whether
// the failure was the backend's (so another backend may be asked).
func (p *pool) observe(b *backend, req *http.Request, st *requestState, err error, connected, reused bool) bool {
	if err == nil {
		if b.succeeded() {
			p.h.logger.Info("backend up", "listener", p.h.listener, "tenant", p.rt.tenant,
				"route", p.rt.label, "backend", b.index, "addr", b.url.Host, "by", "request")
		}
		return true
	}
	if req.Context().Err() != nil || st.bodyError() != nil || errors.Is(err, relay.ErrDescriptors) {
		return false
	}
	if connected && (reused || isTimeout(err)) {
		// A slow answer says something of the request, not of the host:
		// the 504 is enough. A kept-alive connection may have been
		// closed by the backend as it went out (its idle timeout); the
		// next new connection shows whether the host is down.
		return true
	}
	if d, ok := b.failed(time.Now(), backendDownTime, backendDownMax); ok {
		p.h.logger.Warn("backend down", "listener", p.h.listener, "tenant", p.rt.tenant,
			"route", p.rt.label, "backend", b.index, "addr", b.url.Host, "for", d, "by", "request", "err", err)
	}
	return true
}

// retrySafe reports whether a failed request may go to another backend: when
// no connection was had, nothing of it was sent; otherwise only an
// idempotent request without a body, that did not merely time out.
func retrySafe(req *http.Request, err error, connected bool) bool {
	if !connected {
		return true
	}
	if isTimeout(err) || (req.Body != nil && req.Body != http.NoBody) {
		return false
	}
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// targetURL aims the client's URL at base the way the route's Rewrite does
// for its first backend.
func targetURL(base *url.URL, in url.URL) *url.URL {
	pr := httputil.ProxyRequest{Out: &http.Request{URL: &in}}
	pr.SetURL(base)
	return pr.Out.URL
}

// keepOpen hides Close from the transport; see pool.RoundTrip.
type keepOpen struct{ io.ReadCloser }

func (keepOpen) Close() error { return nil }

// watch runs b's active check every interval until ctx ends.
func (h *Handler) watch(ctx context.Context, rt *route, b *backend) {
	defer h.wg.Done()
	t := time.NewTicker(rt.interval)
	defer t.Stop()
	for {
		h.check(ctx, rt, b)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// check fetches b's health path once: 2xx and 3xx pass, anything else
// (error, timeout, 4xx, 5xx) fails until a later check passes. A pass also
// ends a passive back-off.
func (h *Handler) check(ctx context.Context, rt *route, b *backend) {
	cctx, cancel := context.WithTimeout(ctx, min(healthTimeout, rt.interval))
	defer cancel()
	req, err := http.NewRequestWithContext(cctx, http.MethodGet, b.health.String(), nil)
	if err != nil {
		return // unreachable: the URL was built from parsed parts
	}
	req.Header.Set("User-Agent", "gatehouse-health")
	resp, err := b.client.Do(req)
	if ctx.Err() != nil || errors.Is(err, relay.ErrDescriptors) {
		return // stopping, or no descriptor to check with: says nothing of the backend
	}
	reason := ""
	switch {
	case err != nil:
		reason = err.Error()
	case resp.StatusCode < 200 || resp.StatusCode >= 400:
		reason = fmt.Sprintf("status %d", resp.StatusCode)
	}
	if resp != nil {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		resp.Body.Close()
	}
	log := h.logger.With("listener", h.listener, "tenant", rt.tenant, "route", rt.label,
		"backend", b.index, "addr", b.url.Host, "by", "health check")
	if reason != "" {
		if !b.activeDown.Swap(true) {
			log.Warn("backend down", "reason", reason)
		}
		return
	}
	wasDown := b.activeDown.Swap(false)
	if b.succeeded() || wasDown {
		log.Info("backend up")
	}
}

// healthURL is base's scheme and host with the route's health path, which
// is a path on the backend host (not under the backend URL's path).
func healthURL(base *url.URL, path string) (*url.URL, error) {
	p, err := url.Parse(path)
	if err != nil || !strings.HasPrefix(path, "/") || p.Host != "" || p.Fragment != "" {
		return nil, fmt.Errorf("%w: health path %q must be an absolute path", ErrRoute, path)
	}
	return &url.URL{Scheme: base.Scheme, Host: base.Host, Path: p.Path, RawPath: p.RawPath, RawQuery: p.RawQuery}, nil
}
