package tunnel

import (
	"fmt"
	"slices"
)

// remove takes t out of its tenant's pool.
func (g *Gateway) remove(t *gwTunnel) {
	g.mu.Lock()
	defer g.mu.Unlock()
	p := g.pools[t.tenant]
	if p == nil {
		return
	}
	for i, x := range p.tunnels {
		if x == t {
			p.tunnels = append(p.tunnels[:i], p.tunnels[i+1:]...)
			break
		}
	}
}

// pick chooses a tunnel, not one of the connectors in except, and counts
// the stream on it and its tenant.
func (g *Gateway) pick(tenant string, except []string) (*gwTunnel, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil, ErrClosed
	}
	p := g.pools[tenant]
	if p == nil || len(p.tunnels) == 0 {
		return nil, ErrNoTunnel
	}
	if p.streams >= g.cfg.StreamsPerTenant {
		return nil, ErrTenantLimit
	}
	var best *gwTunnel
	healthy := 0
	for _, t := range p.tunnels {
		if t.draining || t.sess.IsClosed() || slices.Contains(except, t.fp) {
			continue
		}
		healthy++
		if t.streams < g.cfg.StreamsPerTunnel && (best == nil || t.streams < best.streams) {
			best = t
		}
	}
	switch {
	case healthy == 0:
		return nil, ErrNoTunnel
	case best == nil:
		return nil, ErrTunnelsFull
	}
	best.streams++
	p.streams++
	g.m.active(tenant, 1)
	return best, nil
}

func (g *Gateway) release(t *gwTunnel) {
	g.mu.Lock()
	t.streams--
	if p := g.pools[t.tenant]; p != nil {
		p.streams--
	}
	g.mu.Unlock()
	g.m.active(t.tenant, -1)
}

// Tunnels returns how many tunnels each tenant has up.
func (g *Gateway) Tunnels() map[string]int {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := map[string]int{}
	for tenant, p := range g.pools {
		if len(p.tunnels) > 0 {
			out[tenant] = len(p.tunnels)
		}
	}
	return out
}

// Revalidate identifies every tunnel's connector certificate again (after
// a CRL or trust list change) and closes the tunnels whose certificate no
// longer proves the tenant they were bound to. It returns how many.
func (g *Gateway) Revalidate() int {
	g.mu.Lock()
	var all []*gwTunnel
	for _, p := range g.pools {
		all = append(all, p.tunnels...)
	}
	g.mu.Unlock()
	n := 0
	for _, t := range all {
		tenant, err := g.cfg.Identify(t.tc.ConnectionState())
		if err == nil && tenant == t.tenant {
			continue
		}
		if err == nil {
			err = fmt.Errorf("the certificate now proves tenant %q", tenant)
		}
		g.log.Warn("tunnel closed: its connector certificate no longer checks out", "tenant", t.tenant, "tunnel", t.id, "remote", t.remote, "err", err)
		t.sess.Close()
		n++
	}
	return n
}
