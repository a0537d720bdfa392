package config

import (
	"encoding/pem"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// Gateway makes the process the cloud half of a gateway and connector pair:
// the listeners' sessions go down the tunnels of their tenant's connectors.
// Listen empty: not a gateway.
type Gateway struct {
	Listen     string `mapstructure:"listen"`
	ServerCert string `mapstructure:"server_cert"`
	ServerKey  string `mapstructure:"server_key"`
	// Connectors say which certificates may open a tunnel, and for which
	// tenant: a trust list of its own, apart from the tenants'.
	Connectors       []ConnectorTrust `mapstructure:"connectors"`
	StreamsPerTunnel int              `mapstructure:"streams_per_tunnel"`
	StreamsPerTenant int              `mapstructure:"streams_per_tenant"`
	Keepalive        Keepalive        `mapstructure:"keepalive"`
}

// ConnectorTrust is the certificates that prove a connector of one tenant.
type ConnectorTrust struct {
	Tenant string `mapstructure:"tenant"`
	// Environment is the tenant's environment whose sessions the
	// connector's tunnels carry; required when the tenant declares any.
	Environment   string     `mapstructure:"environment"`
	ClientCA      string     `mapstructure:"client_ca"`
	Intermediates string     `mapstructure:"intermediates"`
	CRL           string     `mapstructure:"crl"`
	Identities    Identities `mapstructure:"identities"`
}

// Keepalive is how a dead tunnel is found: a ping every Interval, and a
// tunnel whose ping or write takes over Timeout is closed.
type Keepalive struct {
	Interval time.Duration `mapstructure:"interval"`
	Timeout  time.Duration `mapstructure:"timeout"`
}

// Connector makes the process the enterprise half: it dials out to the
// gateways and serves the streams they send. Gateways empty: not a
// connector.
type Connector struct {
	Tenant    string         `mapstructure:"tenant"`
	Gateways  []string       `mapstructure:"gateways"`
	GatewayCA string         `mapstructure:"gateway_ca"`
	Cert      string         `mapstructure:"cert"`
	Key       string         `mapstructure:"key"`
	Tunnels   int            `mapstructure:"tunnels"`
	Proxy     ConnectorProxy `mapstructure:"proxy"`
	Allow     []string       `mapstructure:"allow"`
	Keepalive Keepalive      `mapstructure:"keepalive"`
}

// ConnectorProxy is the site's HTTP proxy the tunnels leave through with
// CONNECT. Address empty: they dial the gateways directly.
type ConnectorProxy struct {
	Address      string `mapstructure:"address"`
	Username     string `mapstructure:"username"`
	PasswordFile string `mapstructure:"password_file"`
}

// Role is what the process plays.
type Role string

// Roles.
const (
	RoleAppliance Role = "appliance"
	RoleGateway   Role = "gateway"
	RoleConnector Role = "connector"
)

// Role says which role the configuration asks for (validation refuses
// both).
func (cfg *Config) Role() Role {
	switch {
	case cfg.Gateway.Listen != "":
		return RoleGateway
	case len(cfg.Connector.Gateways) > 0:
		return RoleConnector
	}
	return RoleAppliance
}

// AllowList is the connector's allow-list, parsed (validation refused a bad
// entry).
func (c Connector) AllowList() []policy.Destination {
	var out []policy.Destination
	for _, s := range c.Allow {
		if d, err := policy.ParseDestination(s); err == nil {
			out = append(out, d)
		}
	}
	return out
}

// MaxTunnels bounds connector.tunnels.
const MaxTunnels = 64

func (cfg *Config) validateRoles(c *checker, tenants map[string]bool) {
	g, k := cfg.Gateway, cfg.Connector
	if g.Listen != "" && len(k.Gateways) > 0 {
		c.add("gateway.listen", "set together with connector.gateways: one process plays one role (gateway or connector)")
		return
	}
	switch cfg.Role() {
	case RoleGateway:
		cfg.validateGateway(c, tenants)
	case RoleConnector:
		cfg.validateConnector(c, tenants)
	}
}

func (cfg *Config) validateGateway(c *checker, tenants map[string]bool) {
	g := cfg.Gateway
	if ap, err := parseListen(g.Listen); err != nil {
		c.add("gateway.listen", "%v", err)
	} else {
		kernel := cfg.Enforcement.XDP != string(policy.XDPOff) || cfg.Enforcement.NFTables
		for i, l := range cfg.Listeners {
			lp, err := parseListen(l.Listen)
			switch {
			case err != nil || lp.Port() != ap.Port():
			case listenOverlap(ap.Addr(), lp.Addr()):
				c.add("gateway.listen", "%s overlaps listeners[%d] (%s): the same port on the same address, or a wildcard that takes it; use another port or two distinct addresses", g.Listen, i, l.Listen)
			case kernel:
				c.add("gateway.listen", "port %d is listeners[%d]'s port (on another address): the kernel layers admit by port, so connectors would be held to the listeners' admitted ranges; use another port, or turn enforcement.xdp and enforcement.nftables off", ap.Port(), i)
			}
		}
		if cfg.Enforcement.Mode == string(policy.ModeStrict) && !cfg.managementPort(ap.Port()) {
			c.add("gateway.listen", "strict mode drops every new inbound connection but the listeners' and management's: list the connectors' egress ranges with port %d in enforcement.management", ap.Port())
		}
	}
	c.file("gateway.server_cert", g.ServerCert, true)
	c.file("gateway.server_key", g.ServerKey, true)
	seen := map[string]string{}
	for i, t := range g.Connectors {
		p := fmt.Sprintf("gateway.connectors[%d]", i)
		switch {
		case t.Tenant == "":
			c.add(p+".tenant", "required")
		case !tenants[t.Tenant]:
			c.add(p+".tenant", "unknown tenant %q", t.Tenant)
		case seen[t.poolKey()] != "":
			c.add(p+".tenant", "duplicate tenant %q (also at %s): list its CAs in one client_ca bundle", t.poolKey(), seen[t.poolKey()])
		default:
			seen[t.poolKey()] = p
			cfg.checkEnvironmentRef(c, p+".environment", t.Tenant, t.Environment)
		}
		c.file(p+".client_ca", t.ClientCA, true)
		c.file(p+".intermediates", t.Intermediates, false)
		c.file(p+".crl", t.CRL, false)
		validateIdentities(c, p, t.Identities)
		// A root shared with the tenants' would let a tenant's client
		// certificate open a tunnel and take its tenant's sessions, and a
		// connector's call a listener, unless identities on both sides
		// tell them apart.
		for j, tn := range cfg.Tenants {
			if (t.Identities.empty() || tn.Identities.empty()) && sharesCert(t.ClientCA, tn.ClientCA) {
				c.add(p+".client_ca", "shares a root with tenants[%d].client_ca: issue connectors from a CA of their own, or narrow both this entry's and the tenant's identities (e.g. uri_san) to tell connectors from clients", j)
			}
		}
		checkConnectorEnvironments(c, p, t, g.Connectors[:i])
	}
	if len(g.Connectors) == 0 {
		c.add("gateway.connectors", "at least one is required: without one no connector can open a tunnel")
	}
	if g.StreamsPerTunnel < 1 {
		c.add("gateway.streams_per_tunnel", "must be at least 1, got %d", g.StreamsPerTunnel)
	}
	if g.StreamsPerTenant < 1 {
		c.add("gateway.streams_per_tenant", "must be at least 1, got %d", g.StreamsPerTenant)
	}
	validateKeepalive(c, "gateway.keepalive", g.Keepalive)
	// The listeners' rules of the role are policy.CheckListeners' (Tunnel).
}

func (cfg *Config) validateConnector(c *checker, tenants map[string]bool) {
	k := cfg.Connector
	switch {
	case k.Tenant == "":
		c.add("connector.tenant", "required: the tenant this connector serves")
	case !tenants[k.Tenant]:
		c.add("connector.tenant", "unknown tenant %q", k.Tenant)
	}
	for i, gw := range k.Gateways {
		if _, err := policy.HostPort(gw, ""); err != nil {
			c.add(fmt.Sprintf("connector.gateways[%d]", i), "%v", err)
		}
	}
	c.file("connector.gateway_ca", k.GatewayCA, true)
	c.file("connector.cert", k.Cert, true)
	c.file("connector.key", k.Key, true)
	if k.Tunnels < 1 || k.Tunnels > MaxTunnels {
		c.add("connector.tunnels", "must be 1..%d, got %d", MaxTunnels, k.Tunnels)
	}
	if px := k.Proxy; px.Address != "" {
		if _, err := policy.HostPort(px.Address, ""); err != nil {
			c.add("connector.proxy.address", "%v", err)
		}
		if px.PasswordFile != "" && px.Username == "" {
			c.add("connector.proxy.username", "required with password_file")
		}
		c.file("connector.proxy.password_file", px.PasswordFile, false)
	} else if px.Username != "" || px.PasswordFile != "" {
		c.add("connector.proxy.address", "required with username or password_file")
	}
	for i, s := range k.Allow {
		if _, err := policy.ParseDestination(s); err != nil {
			c.add(fmt.Sprintf("connector.allow[%d]", i), "%v", err)
		}
	}
	if len(k.Allow) == 0 {
		c.add("connector.allow", "empty: the connector would refuse every backend; list the CIDR:port it may reach")
	}
	validateKeepalive(c, "connector.keepalive", k.Keepalive)
	if cfg.Enforcement.XDP != string(policy.XDPOff) || cfg.Enforcement.NFTables {
		c.add("enforcement", "a connector has no public listener for the kernel layers to police: set enforcement.xdp: off and enforcement.nftables: false")
	}
	for i, l := range cfg.Listeners {
		p := fmt.Sprintf("listeners[%d]", i)
		if ap, err := parseListen(l.Listen); err == nil && !ap.Addr().IsLoopback() {
			c.add(p+".listen", "a connector's listeners bind loopback only (e.g. 127.0.0.1:%d): its sessions arrive down the tunnels, and nothing may be reachable from outside", ap.Port())
		}
		if l.StartTLS {
			c.add(p+".starttls", "a connector's sessions arrive down the tunnel with TLS done at the gateway: START_TLS cannot be served")
		}
		for j, r := range l.Routes {
			if r.Tenant != "" && k.Tenant != "" && r.Tenant != k.Tenant {
				c.add(fmt.Sprintf("%s.routes[%d].tenant", p, j), "%q: a connector serves its own tenant (connector.tenant %q) only", r.Tenant, k.Tenant)
			}
		}
	}
}

// listenOverlap reports whether two listen addresses of one port take
// the same socket: the same address, or a wildcard that covers the other
// (the IPv6 wildcard takes IPv4 too; an empty host is both).
func listenOverlap(a, b netip.Addr) bool {
	wild := func(x netip.Addr) bool { return !x.IsValid() || x.IsUnspecified() }
	switch {
	case wild(a) && wild(b):
		return true
	case wild(b):
		a, b = b, a
	case !wild(a):
		return a.Unmap() == b.Unmap()
	}
	// a is a wildcard, b an address.
	return !a.IsValid() || a.Is6() || b.Unmap().Is4()
}

func validateKeepalive(c *checker, p string, k Keepalive) {
	if k.Interval < 500*time.Millisecond || k.Interval > time.Minute {
		c.add(p+".interval", "must be 500ms..1m, got %s", k.Interval)
	}
	if k.Timeout < 500*time.Millisecond || k.Timeout > time.Minute {
		c.add(p+".timeout", "must be 500ms..1m, got %s", k.Timeout)
	}
}

// TunnelListener is the name the tunnel port has in ConnectorTrust.
const TunnelListener = "tunnel"

// ConnectorTrust compiles gateway.connectors into a policy of their own
// for a certificate manager apart from the tenants': each entry is a
// "tenant" whose client certificates are that tenant's connectors, and
// the one listener is the tunnel port. Session tickets are off: a tunnel
// lives long, and each handshake is judged in full.
func (cfg *Config) ConnectorTrust() *policy.Policy {
	g := cfg.Gateway
	ap, _ := parseListen(g.Listen)
	p := &policy.Policy{
		StateDir: cfg.StateDir,
		TLS:      policy.TLS{CRLStale: policy.CRLStale(cfg.TLS.CRLStale), SessionTicketsDisabled: true, TicketRotation: cfg.TLS.TicketRotation},
		Listeners: []policy.Listener{{Name: TunnelListener, Addr: ap.Addr(), Port: ap.Port(), Protocol: policy.ProtoTCP,
			ServerCert: g.ServerCert, ServerKey: g.ServerKey}},
	}
	for _, t := range g.Connectors {
		p.Tenants = append(p.Tenants, policy.Tenant{ID: t.poolKey(), ClientCA: t.ClientCA, Intermediates: t.Intermediates, CRL: t.CRL,
			Identities: t.Identities.policy()})
	}
	return p
}

// managementPort reports whether a management range is open on port.
func (cfg *Config) managementPort(port uint16) bool {
	for _, m := range cfg.Enforcement.Management {
		for _, p := range m.Ports {
			if p == port {
				return true
			}
		}
	}
	return false
}

func (id Identities) empty() bool {
	return len(id.URISAN)+len(id.DNSSAN)+len(id.CN)+len(id.OU)+len(id.FingerprintsSHA256)+len(id.SPKISHA256) == 0
}

// sharesCert reports whether two PEM bundles hold a certificate in common
// (false when either cannot be read: that is reported on its own).
func sharesCert(a, b string) bool {
	ca, errA := os.ReadFile(a)
	cb, errB := os.ReadFile(b)
	if errA != nil || errB != nil {
		return false
	}
	seen := map[string]bool{}
	for _, der := range certDER(ca) {
		seen[der] = true
	}
	for _, der := range certDER(cb) {
		if seen[der] {
			return true
		}
	}
	return false
}

// certDER is the DER of each CERTIFICATE block of a PEM bundle.
func certDER(bundle []byte) []string {
	var out []string
	for rest := bundle; ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			return out
		}
		if blk.Type == "CERTIFICATE" {
			out = append(out, string(blk.Bytes))
		}
	}
}

// AllowListWarnings names the connector's route backends given as an
// address outside connector.allow: run refuses their every connection at
// the dial, so check and the start say so beforehand. Backends named by
// host name are judged on the address they resolve to, at each dial.
func (cfg *Config) AllowListWarnings() []string {
	if cfg.Role() != RoleConnector {
		return nil
	}
	allow := cfg.Connector.AllowList()
	var out []string
	for i, l := range cfg.Listeners {
		for j, r := range l.Routes {
			backends := r.Backends
			if r.Backend != "" {
				backends = []string{r.Backend}
			}
			for _, b := range backends {
				hp := b
				if u, err := url.Parse(b); err == nil && u.Host != "" {
					port := u.Port()
					if port == "" {
						port = map[string]string{"https": "443", "http": "80"}[u.Scheme]
					}
					hp = net.JoinHostPort(u.Hostname(), port)
				}
				ap, err := netip.ParseAddrPort(hp)
				if err != nil {
					continue // a name, or not host:port (validation says so)
				}
				allowed := false
				for _, d := range allow {
					allowed = allowed || d.Allows(ap)
				}
				if !allowed {
					out = append(out, fmt.Sprintf("listeners[%d].routes[%d]: backend %s is outside connector.allow: its connections will be refused", i, j, ap))
				}
			}
		}
	}
	return out
}
