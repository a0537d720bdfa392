package config

import (
	"net/netip"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// StaticPrefixes returns static_ranges as prefixes, in file order. Load has
// already proved them valid.
func (cfg *Config) StaticPrefixes() []netip.Prefix {
	out := make([]netip.Prefix, 0, len(cfg.StaticRanges))
	for _, s := range cfg.StaticRanges {
		if p, err := parsePrefix(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// Policy compiles the configuration into a policy without admitted ranges:
// the daemon unites static_ranges and the feeds into Admitted.
func (cfg *Config) Policy() *policy.Policy {
	e := cfg.Enforcement
	rate, _ := ParseRate(e.NewConnRate.PerSource)
	if rate.PerSecond > 0 {
		rate.Burst = e.NewConnRate.Burst
		if rate.Burst == 0 {
			rate.Burst = rate.PerSecond
		}
	}
	p := &policy.Policy{
		Interface: cfg.Interface,
		StateDir:  cfg.StateDir,
		Enforcement: policy.Enforcement{
			XDP:      policy.XDPMode(e.XDP),
			NFTables: e.NFTables,
			Mode:     policy.Mode(e.Mode),
			ScanBlock: policy.ScanBlock{
				DistinctPorts: e.ScanBlock.DistinctPorts,
				Window:        e.ScanBlock.Window,
				BlockFor:      e.ScanBlock.BlockFor,
			},
			NewConnRate:       rate,
			MaxConnsPerSource: e.MaxConnsPerSource,
			SourcePrefix:      policy.SourcePrefix{V4: e.SourcePrefix.V4, V6: e.SourcePrefix.V6},
			Forward:           e.Forward,
		},
		TLS: policy.TLS{
			CRLStale:               policy.CRLStale(cfg.TLS.CRLStale),
			SessionTicketsDisabled: !cfg.TLS.SessionTickets,
			TicketRotation:         cfg.TLS.TicketRotation,
			TicketKeys:             cfg.TLS.TicketKeys,
		},
	}
	for _, m := range e.Management {
		pr, _ := parsePrefix(m.CIDR)
		p.Enforcement.Management = append(p.Enforcement.Management, policy.Management{Prefix: pr, Ports: append([]uint16(nil), m.Ports...)})
	}
	for _, t := range cfg.Tenants {
		p.Tenants = append(p.Tenants, policy.Tenant{
			ID:            t.ID,
			ClientCA:      t.ClientCA,
			Intermediates: t.Intermediates,
			CRL:           t.CRL,
			Identities:    t.Identities.policy(),
			Environments:  t.policyEnvironments(),
		})
	}
	for _, l := range cfg.Listeners {
		ap, _ := parseListen(l.Listen)
		pl := policy.Listener{
			Name:       l.Name,
			Addr:       ap.Addr(),
			Port:       ap.Port(),
			Protocol:   policy.Protocol(l.Protocol),
			ServerCert: l.ServerCert,
			ServerKey:  l.ServerKey,
			StartTLS:   l.StartTLS,
			Tunnel:     cfg.Role() == RoleGateway,
		}
		pl.Limits, pl.TenantLimits = cfg.compileLimits(l)
		for _, ck := range l.ExtraCerts {
			pl.ExtraCerts = append(pl.ExtraCerts, policy.CertKey{Cert: ck.Cert, Key: ck.Key})
		}
		for _, r := range l.Routes {
			pl.Routes = append(pl.Routes, policy.Route{
				Tenant:           r.Tenant,
				Environment:      r.Environment,
				Host:             r.Host,
				Path:             routePath(pl.Protocol, r.Path),
				Backend:          firstBackend(r),
				Backends:         r.Backends,
				HealthPath:       r.HealthPath,
				HealthInterval:   healthInterval(r),
				BackendCA:        r.BackendCA,
				BackendCert:      r.BackendCert,
				BackendKey:       r.BackendKey,
				BackendTLS:       r.BackendTLS,
				SOAPActions:      r.SOAPActions,
				AllowWSDL:        r.AllowWSDL,
				PathParams:       r.PathParams,
				WebSocket:        r.WebSocket,
				LUNames:          r.LUNames,
				TerminalTypes:    r.TerminalTypes,
				ForceLU:          r.ForceLU,
				DevNames:         r.DevNames,
				AllowsAutoSignOn: allowAutoSignOn(pl.Protocol, r),
			})
		}
		p.Listeners = append(p.Listeners, pl)
	}
	return p
}

func (id Identities) policy() policy.Identities {
	return policy.Identities{
		URISAN:             id.URISAN,
		DNSSAN:             id.DNSSAN,
		CommonName:         id.CN,
		OrganizationalUnit: id.OU,
		FingerprintSHA256:  normaliseAll(id.FingerprintsSHA256),
		SPKISHA256:         normaliseAll(id.SPKISHA256),
	}
}

// allowAutoSignOn: a tn5250 route refuses auto sign-on unless it says
// refuse_auto_sign_on: false.
func allowAutoSignOn(proto policy.Protocol, r Route) bool {
	return proto == policy.ProtoTN5250 && r.RefuseAutoSignOn != nil && !*r.RefuseAutoSignOn
}

// firstBackend is the route's backend, or the first of its backends.
func firstBackend(r Route) string {
	if r.Backend == "" && len(r.Backends) > 0 {
		return r.Backends[0]
	}
	return r.Backend
}

// healthInterval defaults to 10s when a health path is set.
func healthInterval(r Route) time.Duration {
	if r.HealthPath != "" && r.HealthInterval == 0 {
		return 10 * time.Second
	}
	return r.HealthInterval
}

func normaliseAll(in []string) []string {
	out := make([]string, len(in))
	for i, s := range in {
		out[i] = normaliseHex(s)
	}
	return out
}
