package httpproxy

import (
	"cmp"
	"crypto/tls"
	"encoding/xml"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/proxy/relay"
)

// route is one tenant's route on the listener.
type route struct {
	index     int // position in the listener's routes, the backend_up label
	tenant    string
	host      string // lower case, no port; "" matches any
	prefix    string
	label     string // host+prefix, the route's name in logs
	backends  []*backend
	interval  time.Duration // active health check period; 0 none
	proxy     *httputil.ReverseProxy
	actions   map[string]*allowedAction // soap: the allow-list by action
	allowWSDL bool
	soap      bool
	// pathParams lets requests carry ;parameters in path segments.
	pathParams bool
	websocket  bool   // WebSocket upgrades may pass
	key        string // policy.Route.Key, for the tunnels of upgraded connections
}

// newRoute compiles one route that policy.CheckListeners passed: it parses
// what it needs, and leaves the judging to the policy.
func (h *Handler) newRoute(index int, pr policy.Route) (*route, error) {
	addrs := pr.Backends
	if len(addrs) == 0 {
		addrs = []string{pr.Backend}
	}
	var urls []*url.URL
	for _, addr := range addrs {
		u, err := url.Parse(addr)
		if err != nil {
			return nil, fmt.Errorf("%w: backend %q: %w", ErrRoute, addr, err)
		}
		urls = append(urls, u)
	}
	prefix := cmp.Or(pr.Path, "/")
	host := policy.NormHost(pr.Host)
	rt := &route{
		index:      index,
		tenant:     pr.Tenant,
		host:       host,
		prefix:     prefix,
		label:      host + prefix,
		interval:   pr.HealthInterval,
		allowWSDL:  pr.AllowWSDL,
		soap:       h.soap,
		pathParams: pr.PathParams,
		websocket:  pr.WebSocket,
		actions:    map[string]*allowedAction{},
	}
	for _, entry := range pr.SOAPActions {
		a, err := policy.ParseSOAPAction(entry)
		if err != nil {
			return nil, fmt.Errorf("%w: soap action %q: %w", ErrRoute, entry, err)
		}
		allowed := rt.actions[a.Action]
		if allowed == nil {
			allowed = &allowedAction{}
			rt.actions[a.Action] = allowed
		}
		if a.Name == "" {
			allowed.derived = true
		} else {
			allowed.elements = append(allowed.elements, xml.Name{Space: a.Namespace, Local: a.Name})
		}
	}
	tc, err := backendTLS(urls, pr)
	if err != nil {
		return nil, err
	}
	for i, u := range urls {
		b := &backend{index: i, url: u}
		b.transport, b.direct = h.newTransport(u, tc, h.limitsOf(pr.Tenant))
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
		BufferPool:    relay.Buffers, // else ReverseProxy allocates 32 KiB per response
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
	tc, err := certs.BackendTLS(pr, "") // ServerName per backend, in newTransport
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRoute, err)
	}
	return tc, nil
}

// MaxIdlePerBackend is how many idle connections to one backend a
// listener generation keeps for reuse.
const MaxIdlePerBackend = 64

// newTransport returns the transport of a backend, and under the fast
// engine the direct transport its HTTP/1.1 requests take (the Transport
// stays for its health checks and HTTP/2 clients' requests).
func (h *Handler) newTransport(u *url.URL, tc *tls.Config, lim *tenantLimits) (*http.Transport, *directTransport) {
	d := &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
	if h.fds != nil {
		d.Control = h.fds.Control()
	}
	dial := socketDial(d.DialContext)
	if h.fds != nil {
		// Counted, and refused within the descriptor reserve: HTTP/2
		// opens one per stream.
		dial = h.fds.Dialer(dial)
	}
	tr := &http.Transport{
		Proxy:                 nil, // never an environment proxy: backends are internal
		DialContext:           dial,
		MaxIdleConns:          MaxIdlePerBackend, // one host per transport
		MaxIdleConnsPerHost:   MaxIdlePerBackend,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   dialTimeout,
		ResponseHeaderTimeout: lim.BackendTimeout,
		ExpectContinueTimeout: time.Second,
	}
	if u.Scheme == "https" {
		tc = tc.Clone()
		tc.ServerName = u.Hostname()
		tr.TLSClientConfig = tc
	}
	if h.engine != EngineFast {
		return tr, nil
	}
	return tr, newDirectTransport(hostPort(u), tr.TLSClientConfig, dial, lim.BackendTimeout)
}

// hostPort is u's host with its port, the scheme's when it names none.
func hostPort(u *url.URL) string {
	if port := u.Port(); port != "" {
		return net.JoinHostPort(u.Hostname(), port)
	}
	if u.Scheme == "https" {
		return net.JoinHostPort(u.Hostname(), "443")
	}
	return net.JoinHostPort(u.Hostname(), "80")
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

// match returns the most specific route of the (tenant, environment) for
// host and path. Both come from the certificate; nothing in the request
// can select another tenant's or environment's routes.
func (h *Handler) match(te policy.TenantEnv, host, p string) *route {
	for _, rt := range h.byTenant[te] {
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
