package daemon

import (
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/fleet"
	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/rules"
)

// Status is what `gatehouse status` shows: the generation in force and
// what the layers report of it.
type Status struct {
	Version    string    `json:"version"`
	PID        int       `json:"pid"`
	Started    time.Time `json:"started"`
	Generation uint64    `json:"generation"`
	Ready      bool      `json:"ready"`
	NotReady   []string  `json:"not_ready,omitempty"` // why not, as /readyz says
	// Warnings are standing ones (a filter that will not outlive the
	// daemon), not reasons to be unready.
	Warnings []string `json:"warnings,omitempty"`
	// Held names the kernel layers still enforcing the previous run's
	// admitted ranges (see holdPrevious); HeldAdmitted is how many
	// prefixes of them, when they could be read (the admitted counts are
	// then those of the other layers).
	Held         []string          `json:"held_layers,omitempty"`
	HeldAdmitted *AdmittedCount    `json:"held_admitted,omitempty"`
	Interface    string            `json:"interface"`
	XDPMode      string            `json:"xdp_mode"` // native, generic, off
	NFTables     bool              `json:"nftables"`
	Mode         string            `json:"mode"`
	Admitted     []AdmittedCount   `json:"admitted"`
	Feeds        []rules.FeedState `json:"feeds"`
	Tenants      []TenantStatus    `json:"tenants"`
	Listeners    []ListenerRoute   `json:"listeners"`
	Certs        []CertExpiry      `json:"certificates"`
	Counters     []Counter         `json:"counters"`
	ReloadError  uint64            `json:"reload_errors"`
	// Refusals are the last refused TLS handshakes, newest first.
	Refusals []certs.Refusal `json:"refusals"`
	// Role is appliance, gateway or connector; Tunnels are a gateway's
	// tunnels up per tenant, a connector's per gateway.
	Role    string         `json:"role"`
	Tunnels []TunnelStatus `json:"tunnels,omitempty"`
	BGP     *BGPStatus     `json:"bgp,omitempty"` // nil: bgp off
	// Fleet is this node's peers and the blocks shared with them, nil
	// when fleet is off.
	Fleet *fleet.Status `json:"fleet,omitempty"`
	// Privsep says whether the proxies run in unprivileged workers, and
	// lists them.
	Privsep *PrivsepStatus `json:"privsep,omitempty"`
}

// TunnelStatus is how many tunnels are up to one peer: a gateway counts
// them per tenant, a connector per gateway.
type TunnelStatus struct {
	Peer string `json:"peer"`
	Up   int    `json:"up"`
}

// RefusalLister is a component that remembers the last refused handshakes.
type RefusalLister interface {
	Refusals() []certs.Refusal
}

// AdmittedCount is the number of prefixes one source contributes.
type AdmittedCount struct {
	Source string `json:"source"`
	V4     int    `json:"v4"`
	V6     int    `json:"v6"`
}

// TenantStatus is one tenant and its live sessions, in all and per
// environment (the one implicit "default" of a tenant without any).
type TenantStatus struct {
	ID           string              `json:"id"`
	Sessions     int                 `json:"sessions"`
	Environments []EnvironmentStatus `json:"environments"`
}

// EnvironmentStatus is one environment of a tenant and its live sessions.
type EnvironmentStatus struct {
	Name     string `json:"name"`
	Sessions int    `json:"sessions"`
}

// ListenerRoute is one route of one listener, as status shows the
// generation in force and check the configuration (Routes).
type ListenerRoute struct {
	Listener string `json:"listener"`
	Listen   string `json:"listen"`
	Protocol string `json:"protocol"`
	StartTLS bool   `json:"start_tls,omitempty"`
	Tenant   string `json:"tenant"`
	// Environment is the tenant's environment the route serves, empty
	// for a tenant without environments.
	Environment string   `json:"environment,omitempty"`
	Host        string   `json:"host,omitempty"`
	Path        string   `json:"path,omitempty"`
	Backends    []string `json:"backends"` // every backend, in order
	// Health is each backend's state, "up" or "down" (gatehouse_backend_up),
	// in the order of Backends; empty where the listener does not track it.
	Health []string `json:"backend_health,omitempty"`
}

// Routes lists every route of every listener of p, in order.
func Routes(p *policy.Policy) []ListenerRoute {
	var out []ListenerRoute
	for _, l := range p.Listeners {
		for _, r := range l.Routes {
			backends := r.Backends
			if len(backends) == 0 {
				backends = []string{r.Backend}
			}
			out = append(out, ListenerRoute{Listener: l.Name, Listen: l.ListenAddress(), Protocol: string(l.Protocol),
				StartTLS: l.StartTLS, Tenant: r.Tenant, Environment: r.Environment, Host: r.Host, Path: r.Path, Backends: slices.Clone(backends)})
		}
	}
	return out
}

// CertExpiry is when a certificate or CRL runs out.
type CertExpiry struct {
	Kind    string    `json:"kind"`
	Name    string    `json:"name"`
	Expires time.Time `json:"expires"`
}

// Counter is one counter series, labels folded into its name.
type Counter struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	// The series' tenant and environment, "" for a global one: what the
	// admin API filters a tenant principal's view by.
	tenant, env string
}

// Status reports the generation in force.
func (d *Daemon) Status() Status {
	st := Status{Version: d.opts.Version, PID: os.Getpid(), Started: d.started, Role: string(d.cfg.Load().Role()), BGP: d.bgpStatus(),
		Privsep: d.privsepStatus()}
	st.NotReady = d.NotReady()
	st.Ready = len(st.NotReady) == 0
	if h := d.hold.Load(); h != nil {
		st.Held = h.layers
		if h.ranges != nil {
			st.HeldAdmitted = &AdmittedCount{Source: "previous run (read from " + h.from + ")", V4: len(h.ranges.V4), V6: len(h.ranges.V6)}
		}
	}
	for _, c := range d.components {
		if w, ok := c.(Warner); ok {
			st.Warnings = append(st.Warnings, w.Warnings()...)
		}
		if f, ok := c.(FleetReporter); ok {
			fs := f.FleetStatus()
			st.Fleet = &fs
		}
	}
	if fs := d.feeds.Load(); fs != nil && fs.mgr != nil {
		st.Feeds = fs.mgr.States()
	}
	p := d.Policy()
	if p == nil {
		return st
	}
	st.Generation, st.Interface, st.Mode = p.Generation, p.Interface, string(p.Enforcement.Mode)
	st.XDPMode, st.NFTables = "off", p.Enforcement.NFTables
	for src, c := range p.Admitted.PerFeed {
		st.Admitted = append(st.Admitted, AdmittedCount{Source: src, V4: c.V4, V6: c.V6})
	}
	sort.Slice(st.Admitted, func(i, j int) bool { return st.Admitted[i].Source < st.Admitted[j].Source })
	st.Admitted = append(st.Admitted, AdmittedCount{Source: "in force (aggregated)", V4: len(p.Admitted.V4), V6: len(p.Admitted.V6)})
	st.Listeners = Routes(p)

	mfs, _ := d.gatherer().Gather()        // partial results are still worth showing
	sessions := map[policy.TenantEnv]int{} // live connections per tenant and environment
	up := map[[3]string]bool{}             // listener, route and backend index
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			lbl := labels(m)
			v := value(m)
			switch mf.GetName() {
			case "gatehouse_xdp_attach_mode":
				if v == 1 {
					st.XDPMode = lbl["mode"]
				}
			case "gatehouse_tunnels_up":
				st.Tunnels = append(st.Tunnels, TunnelStatus{Peer: lbl["peer"], Up: int(v)})
			case "gatehouse_backend_up":
				up[[3]string{lbl["listener"], lbl["route_index"], lbl["backend_index"]}] = v == 1
			case "gatehouse_proxy_connections_active":
				sessions[policy.MakeTenantEnv(lbl["tenant"], lbl["environment"])] += int(v)
			case "gatehouse_cert_expiry_timestamp_seconds":
				st.Certs = append(st.Certs, CertExpiry{Kind: lbl["kind"], Name: lbl["name"], Expires: time.Unix(int64(v), 0)})
			case "gatehouse_config_reloads_total":
				if lbl["result"] == "error" {
					st.ReloadError = uint64(v)
				}
			case "gatehouse_xdp_packets_total", "gatehouse_nft_packets_total", "gatehouse_tls_handshakes_total",
				"gatehouse_feed_updates_total", "gatehouse_soap_rejections_total", "gatehouse_telnet_sessions_total",
				"gatehouse_xdp_blocked_sources", "gatehouse_nft_blocked_sources",
				"gatehouse_tunnel_streams_total", "gatehouse_tunnel_reconnects_total", "gatehouse_tunnel_handshakes_total":
				if v > 0 {
					st.Counters = append(st.Counters, Counter{Name: seriesName(mf.GetName(), lbl), Value: v, tenant: lbl["tenant"], env: envOf(lbl)})
				}
			}
		}
	}
	backendHealth(st.Listeners, up)
	for _, t := range p.Tenants {
		ts := TenantStatus{ID: t.ID}
		for _, e := range t.EnvironmentNames() {
			n := sessions[policy.MakeTenantEnv(t.ID, e)]
			ts.Sessions += n
			ts.Environments = append(ts.Environments, EnvironmentStatus{Name: e, Sessions: n})
		}
		st.Tenants = append(st.Tenants, ts)
	}
	for _, c := range d.components {
		if rl, ok := c.(RefusalLister); ok {
			st.Refusals = append(st.Refusals, rl.Refusals()...)
		}
	}
	sort.SliceStable(st.Refusals, func(i, j int) bool { return st.Refusals[i].Time.After(st.Refusals[j].Time) })
	st.Refusals = st.Refusals[:min(len(st.Refusals), certs.RefusalsKept)]
	sort.Slice(st.Certs, func(i, j int) bool { return st.Certs[i].Expires.Before(st.Certs[j].Expires) })
	sort.Slice(st.Counters, func(i, j int) bool { return st.Counters[i].Name < st.Counters[j].Name })
	sort.Slice(st.Tunnels, func(i, j int) bool { return st.Tunnels[i].Peer < st.Tunnels[j].Peer })
	st.Listeners = append(st.Listeners, tunnelRoutes(p, d.cfg.Load(), st.Tunnels)...)
	return st
}

// backendHealth fills in each route's Health from gatehouse_backend_up
// (keyed by listener, the route's and the backend's position), for the
// routes whose listener reports it.
func backendHealth(routes []ListenerRoute, up map[[3]string]bool) {
	idx := map[string]int{}
	for i := range routes {
		r := &routes[i]
		ri := idx[r.Listener]
		idx[r.Listener]++
		for bi := range r.Backends {
			v, ok := up[[3]string{r.Listener, strconv.Itoa(ri), strconv.Itoa(bi)}]
			if !ok {
				r.Health = nil
				break
			}
			r.Health = append(r.Health, map[bool]string{true: "up", false: "down"}[v])
		}
	}
}

func labels(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, lp := range m.GetLabel() {
		out[lp.GetName()] = lp.GetValue()
	}
	return out
}

func value(m *dto.Metric) float64 {
	switch {
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	}
	return 0
}

func seriesName(name string, lbl map[string]string) string {
	keys := make([]string, 0, len(lbl))
	for k := range lbl {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	s := name + "{"
	for i, k := range keys {
		if i > 0 {
			s += ","
		}
		s += fmt.Sprintf("%s=%q", k, lbl[k])
	}
	return s + "}"
}
