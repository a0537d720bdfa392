package proxy

import (
	"sync"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// Why the proxy closed a connection before serving it: the values of the
// reason label of gatehouse_proxy_connections_refused_total.
const (
	// A new connection, while the listener holds limits.connections
	// connections.
	reasonListenerFull = "listener_full"
	// An identified connection of a tenant at limits.connections_per_tenant.
	reasonTenantLimit = "tenant_limit"
)

// gate admits the connections of one socket: it counts every connection
// the listener holds against limits.connections.
type gate struct {
	mu    sync.Mutex
	total int // connections held
}

// admission is a connection's place at the gate. gate.mu guards it.
type admission struct {
	counted bool // in gate.total
}

// admit counts c in; it reports false when the listener is full.
func (g *gate) admit(c *conn, lim policy.Limits, _ time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.total >= lim.MaxConns {
		return false
	}
	g.total++
	c.adm.counted = true
	return true
}

// release lets c go; it may run more than once.
func (g *gate) release(c *conn) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if c.adm.counted {
		c.adm.counted = false
		g.total--
	}
}
