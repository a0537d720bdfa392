package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/enforcer/nft"
	"github.com/gatehouse-dmz/gatehouse/enforcer/xdp"
	"github.com/gatehouse-dmz/gatehouse/internal/config"
	"github.com/gatehouse-dmz/gatehouse/internal/worker"
	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/proxy"
	"github.com/gatehouse-dmz/gatehouse/tunnel"
)

// layer adapts one package's component to the daemon's interfaces; the
// optional loops are nil where a package has none.
type layer struct {
	name       string
	rangeBlind bool // see RangeBlind
	apply      func(*policy.Policy) error
	close      func() error
	run        func(context.Context) error
	shutdown   func(context.Context) error
	refusals   func() []certs.Refusal                    // see RefusalLister
	holds      func() (bool, error)                      // see Holder
	heldSet    func() (v4, v6 []netip.Prefix, err error) // see HeldSet
	notReady   func() string                             // see Health
	warnings   []string                                  // see Warner
	pool       *worker.Pool                              // the proxy workers (enforcement.privsep)
	sessions   SessionCutter                             // see SessionHolder
}

var (
	_ Component     = (*layer)(nil)
	_ Runner        = (*layer)(nil)
	_ Drainer       = (*layer)(nil)
	_ RangeBlind    = (*layer)(nil)
	_ RefusalLister = (*layer)(nil)
	_ Holder        = (*layer)(nil)
	_ HeldSet       = (*layer)(nil)
	_ Health        = (*layer)(nil)
	_ Warner        = (*layer)(nil)
	_ SessionHolder = (*layer)(nil)
)

func (l *layer) Sessions() SessionCutter { return l.sessions }

func (l *layer) RangeBlind() bool             { return l.rangeBlind }
func (l *layer) Name() string                 { return l.name }
func (l *layer) Apply(p *policy.Policy) error { return l.apply(p) }
func (l *layer) Close() error                 { return l.close() }
func (l *layer) Run(ctx context.Context) error {
	if l.run == nil {
		return nil
	}
	return l.run(ctx)
}
func (l *layer) HoldsPrevious() (bool, error) {
	if l.holds == nil {
		return false, nil
	}
	return l.holds()
}
func (l *layer) HeldAdmitted() (v4, v6 []netip.Prefix, err error) {
	if l.heldSet == nil {
		return nil, nil, nil
	}
	return l.heldSet()
}
func (l *layer) NotReady() string {
	if l.notReady == nil {
		return ""
	}
	return l.notReady()
}
func (l *layer) Warnings() []string { return l.warnings }
func (l *layer) Shutdown(ctx context.Context) error {
	if l.shutdown == nil {
		return nil
	}
	return l.shutdown(ctx)
}
func (l *layer) Refusals() []certs.Refusal {
	if l.refusals == nil {
		return nil
	}
	return l.refusals()
}

// BuildComponents creates the real components in the order a generation is
// applied: certificates first (so a new tenant's CA is known before a route
// leads to it), then the kernel layers, then the proxies. Each is added to
// the list before anything else can fail, so an error closes all built so far.
func BuildComponents(env *Env) (comps []Component, err error) {
	p := env.Policy
	defer func() {
		if err != nil {
			for _, c := range comps {
				err = errors.Join(err, c.Close())
			}
			comps = nil
		}
	}()

	privsep := privsepOn(env.Config)
	switch {
	case privsep:
	case env.Config.Enforcement.Privsep:
		env.Logger.Warn("privilege separation is not available for this role: the proxy and its tunnels run in the daemon, with its capabilities",
			"component", "workers", "role", env.Config.Role())
	default:
		env.Logger.Warn("PRIVILEGE SEPARATION IS OFF (enforcement.privsep: false): the process that parses the network holds the capabilities "+
			"to change the firewall; for development only", "component", "workers")
	}
	var cm *certs.Manager
	if !privsep {
		// Under privsep the workers load the certificates themselves.
		cm, err = certs.New(certs.Config{Logger: env.Logger, StateDir: p.StateDir})
		if err != nil {
			return nil, fmt.Errorf("certs: %w", err)
		}
		comps = append(comps, &layer{name: "certs", rangeBlind: true, apply: cm.Apply, close: cm.Close, run: cm.Watch, refusals: cm.Refusals})
		if err := register(env, "certs", cm); err != nil {
			return comps, err
		}
	}

	var onBlock func(netip.Addr, time.Duration) error
	// The two layers mirror each other's scanners; ne is set below, before
	// any Run starts.
	var ne *nft.Enforcer
	if p.Enforcement.XDP != policy.XDPOff {
		xe, err := xdp.New(xdp.Config{Interface: p.Interface, Mode: p.Enforcement.XDP, PinDir: env.Config.Enforcement.PinDir, Logger: env.Logger,
			OnBlock: func(a netip.Addr, d time.Duration) error {
				if ne == nil {
					return nil // nftables off
				}
				return ne.Block(a, d)
			}})
		if err != nil {
			return comps, fmt.Errorf("xdp: %w", err)
		}
		watch := newXDPWatch(xe, env.Logger)
		l := &layer{name: "xdp", apply: xe.Apply, close: xe.Close, run: runBoth(xe.Run, watch.run), notReady: watch.notReady,
			holds: func() (bool, error) { return xe.HoldsPrevious(), nil }}
		comps = append(comps, l)
		if ok, _ := xe.ConntrackLookup(); !ok {
			l.warnings = append(l.warnings, xdp.NoConntrackWarning) // xdp.New logged why
		}
		// Checked once xdp.New has mounted the default bpffs, if it had to,
		// and before anything is attached.
		warning, err := CheckPinDir(env.Config, env.AllowPrivateBPFFS)
		if err != nil {
			return comps, err
		}
		if warning != "" {
			env.Logger.Error(warning, "component", "xdp", "pin_dir", env.Config.Enforcement.PinDir)
			l.warnings = append(l.warnings, warning)
		}
		if err := register(env, "xdp", xe); err != nil {
			return comps, err
		}
		if err := register(env, "xdp watch", watch); err != nil {
			return comps, err
		}
		// A scanner caught by nftables is dropped at the driver too.
		onBlock = xe.Block
	}

	if p.Enforcement.NFTables {
		ne, err = nft.New(nft.Config{Logger: env.Logger, OnBlock: onBlock})
		if err != nil {
			return comps, fmt.Errorf("nftables: %w", err)
		}
		comps = append(comps, &layer{name: "nftables", apply: ne.Apply, close: ne.Close, run: ne.Run, holds: ne.HoldsPrevious, heldSet: ne.HeldAdmitted})
		if err := register(env, "nftables", ne); err != nil {
			return comps, err
		}
		if env.Config.Fleet.Enabled() {
			l, err := buildFleet(env, ne)
			if err != nil {
				return comps, fmt.Errorf("fleet: %w", err)
			}
			comps = append(comps, l)
		}
	}

	if privsep {
		l, pool, err := buildWorkers(env)
		if err != nil {
			return comps, fmt.Errorf("workers: %w", err)
		}
		l.pool = pool
		comps = append(comps, l)
		return comps, register(env, "workers", pool)
	}
	access := env.AccessLog
	if access == nil {
		access = slog.New(slog.DiscardHandler)
	}
	pc := proxy.Config{Logger: env.Logger, TLS: cm, AccessLog: access}
	// The role's tunnels drain after the proxy, whose sessions use them.
	var role *layer
	switch env.Config.Role() {
	case config.RoleGateway:
		var path *gatewayPath
		if role, path, err = buildGateway(env); err != nil {
			return appendLayer(comps, role), fmt.Errorf("tunnel gateway: %w", err)
		}
		pc.Handoff = path.serve
	case config.RoleConnector:
		pc.DialControl = tunnel.AllowList(env.Config.Connector.AllowList()).Control
	}
	px, err := proxy.New(pc)
	if err != nil {
		return appendLayer(comps, role), fmt.Errorf("proxy: %w", err)
	}
	comps = append(comps, &layer{name: "proxy", rangeBlind: true, apply: px.Apply, close: px.Close, shutdown: px.Shutdown, sessions: px})
	if err := register(env, "proxy", px); err != nil {
		return appendLayer(comps, role), err
	}
	if env.Config.Role() == config.RoleConnector {
		if role, err = buildConnector(env, px); err != nil {
			return appendLayer(comps, role), fmt.Errorf("tunnel connector: %w", err)
		}
	}
	comps = appendLayer(comps, role)
	// A changed CRL, CA or tenant list is checked against every live
	// session at once: a revoked certificate loses its connections.
	cm.OnChange(func() {
		if n := px.Revalidate(); n > 0 {
			env.Logger.Info("closed sessions whose certificate no longer checks out", "component", "proxy", "count", n)
		}
	})
	return comps, nil
}

// appendLayer adds l when there is one.
func appendLayer(comps []Component, l *layer) []Component {
	if l == nil {
		return comps
	}
	return append(comps, l)
}

// register adds a component's collector; a clash of metric names is a
// programming error, reported instead of panicking.
func register(env *Env, name string, c prometheus.Collector) error {
	if err := env.Registry.Register(c); err != nil {
		return fmt.Errorf("%s metrics: %w", name, err)
	}
	return nil
}

// runBoth runs two loops of one component until both return; the first
// error is returned.
func runBoth(a, b func(context.Context) error) func(context.Context) error {
	return func(ctx context.Context) error {
		g, ctx := errgroup.WithContext(ctx)
		g.Go(func() error { return a(ctx) })
		g.Go(func() error { return b(ctx) })
		return g.Wait()
	}
}
