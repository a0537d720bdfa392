package proxy

import (
	"time"

	httpproxy "github.com/gatehouse-dmz/gatehouse/proxy/http"
	"github.com/gatehouse-dmz/gatehouse/proxy/telnet"
)

// Defaults for Limits.
const (
	// DefaultHandshakeTimeout bounds a TLS handshake, slow clients included.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultReadHeaderTimeout bounds reading one request's headers.
	DefaultReadHeaderTimeout = 10 * time.Second
	// DefaultIdleTimeout closes a keep-alive connection idle this long.
	DefaultIdleTimeout = 120 * time.Second
	// DefaultMaxHeaderBytes caps a request's header block.
	DefaultMaxHeaderBytes = 64 << 10
	// DefaultMaxConnsPerListener caps the connections one listener holds;
	// more are closed on accept.
	DefaultMaxConnsPerListener = 10_000
	// DefaultMaxConnsPerTenant caps one tenant's connections on one
	// listener, so one tenant cannot use up the listener's share.
	DefaultMaxConnsPerTenant = 2_000
	// DefaultDrainTimeout is how long connections of a listener a reload
	// removed may finish before they are closed.
	DefaultDrainTimeout = 30 * time.Second
	// DefaultBackendDialTimeout bounds connecting to a tcp backend.
	DefaultBackendDialTimeout = 5 * time.Second
)

// Limits bound what clients may hold. Zero fields take the defaults.
type Limits struct {
	HandshakeTimeout    time.Duration
	ReadHeaderTimeout   time.Duration
	IdleTimeout         time.Duration
	MaxHeaderBytes      int
	MaxConnsPerListener int
	MaxConnsPerTenant   int
	DrainTimeout        time.Duration
	BackendDialTimeout  time.Duration
	// HTTP holds the per-request limits of https and soap listeners.
	HTTP httpproxy.Limits
	// Telnet holds the session limits of tn3270 and tn5250 listeners;
	// zero dial and handshake timeouts take BackendDialTimeout and
	// HandshakeTimeout.
	Telnet telnet.Limits
}

func (l Limits) withDefaults() Limits {
	set := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	set(&l.HandshakeTimeout, DefaultHandshakeTimeout)
	set(&l.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	set(&l.IdleTimeout, DefaultIdleTimeout)
	set(&l.DrainTimeout, DefaultDrainTimeout)
	set(&l.BackendDialTimeout, DefaultBackendDialTimeout)
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if l.MaxConnsPerListener <= 0 {
		l.MaxConnsPerListener = DefaultMaxConnsPerListener
	}
	if l.MaxConnsPerTenant <= 0 {
		l.MaxConnsPerTenant = DefaultMaxConnsPerTenant
	}
	return l
}
