package proxy

import (
	"fmt"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
	httpproxy "github.com/gatehouse-dmz/gatehouse/proxy/http"
)

// Every limit the proxy applies comes from the policy generation it runs
// (policy.Listener.Limits, and ForTenant once the tenant is known); the
// configuration resolves them completely. What no configuration key
// reaches is a constant here or in proxy/http and proxy/telnet.
const (
	// BackendDialTimeout bounds connecting to a tcp listener's backend.
	BackendDialTimeout = 5 * time.Second
)

// checkLimits refuses limits the proxy cannot enforce as the
// configuration means them: a generation built by hand (or a bug) must
// not run without caps.
func checkLimits(l policy.Listener) error {
	for tenant, lim := range l.TenantLimits {
		if err := checkTenantLimits(lim); err != nil {
			return fmt.Errorf("%w: listener %q tenant %q: %w", ErrConfig, l.Name, tenant, err)
		}
	}
	lim := l.Limits
	switch {
	case lim.MaxConns < 1:
		return fmt.Errorf("%w: listener %q: connection limit %d", ErrConfig, l.Name, lim.MaxConns)
	case lim.MaxPreHandshake < 1 || lim.MaxPreHandshake >= lim.MaxConns:
		return fmt.Errorf("%w: listener %q: pre-handshake budget %d must be 1 to below the connection limit %d",
			ErrConfig, l.Name, lim.MaxPreHandshake, lim.MaxConns)
	case lim.MaxPreHandshakePerSource < 1:
		return fmt.Errorf("%w: listener %q: pre-handshake budget per source %d", ErrConfig, l.Name, lim.MaxPreHandshakePerSource)
	case lim.HandshakeTimeout <= 0:
		return fmt.Errorf("%w: listener %q: no handshake timeout", ErrConfig, l.Name)
	case lim.DrainTimeout < 0:
		return fmt.Errorf("%w: listener %q: negative drain timeout", ErrConfig, l.Name)
	}
	if l.Protocol == policy.ProtoHTTPS || l.Protocol == policy.ProtoSOAP {
		if h := lim.HTTP; h.MaxHeaderBytes < 1 || h.ReadHeaderTimeout <= 0 || h.IdleTimeout <= 0 {
			return fmt.Errorf("%w: listener %q: header size, read-header and idle timeouts must be set", ErrConfig, l.Name)
		}
	}
	if err := checkTenantLimits(lim); err != nil {
		return fmt.Errorf("%w: listener %q: %w", ErrConfig, l.Name, err)
	}
	return nil
}

func checkTenantLimits(lim policy.Limits) error {
	switch {
	case lim.MaxConnsPerTenant < 1:
		return fmt.Errorf("connections per tenant %d", lim.MaxConnsPerTenant)
	case lim.Telnet.MaxSessionsPerTenant < 1:
		return fmt.Errorf("telnet sessions per tenant %d", lim.Telnet.MaxSessionsPerTenant)
	case lim.TCP.IdleTimeout < 0, lim.TCP.MaxSession < 0, lim.Telnet.IdleTimeout < 0, lim.Telnet.MaxSession < 0:
		return fmt.Errorf("negative session timeout")
	}
	return nil
}

// httpSettings are the listener-wide limits net/http applies itself; an
// http.Server is made for one set of them (see httpServer).
type httpSettings struct {
	maxHeaderBytes    int
	readHeaderTimeout time.Duration
	idleTimeout       time.Duration
	// direct: HTTP/1.1 connections are served by the direct engine's
	// server half (limits.http.engine direct), not by net/http's.
	direct bool
}

func httpSettingsOf(l policy.Limits) httpSettings {
	return httpSettings{
		maxHeaderBytes:    l.HTTP.MaxHeaderBytes,
		readHeaderTimeout: l.HTTP.ReadHeaderTimeout,
		idleTimeout:       l.HTTP.IdleTimeout,
		direct:            l.HTTP.Engine == httpproxy.EngineDirect,
	}
}
