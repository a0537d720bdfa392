package config

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

var (
	nameRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	hexSHA256 = regexp.MustCompile(`^[0-9a-f]{64}$`)
	// Interface names as the kernel accepts them (IFNAMSIZ-1, no '/', no blanks).
	ifnameRE = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,15}$`)
)

// maxTicketRotation bounds tls.ticket_rotation: with three keys kept, a
// ticket then resumes for at most three days (TLS 1.3 allows seven), and a
// stolen key opens no tickets older than that.
const maxTicketRotation = 24 * time.Hour

// FeedFormats are the feed formats gatehouse parses.
var FeedFormats = []string{"aws", "gcp", "azure", "oracle", "cidr"}

type checker struct{ problems Problems }

func (c *checker) add(path, format string, args ...any) {
	c.problems = append(c.problems, Problem{path, fmt.Sprintf(format, args...)})
}

// addOnce is add for a problem that several scopes may find: the first
// report of a key path stands.
func (c *checker) addOnce(path, format string, args ...any) {
	for _, p := range c.problems {
		if p.Path == path {
			return
		}
	}
	c.add(path, format, args...)
}

func (c *checker) file(path, name string, required bool) {
	if name == "" {
		if required {
			c.add(path, "required")
		}
		return
	}
	f, err := os.Open(name)
	if err != nil {
		c.add(path, "cannot read %q: %v", name, unwrapPathError(err))
		return
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.IsDir() {
		c.add(path, "%q is a directory, not a file", name)
	}
}

func unwrapPathError(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

// MinFeedRefresh is the shortest feeds[].refresh; `gatehouse feed refresh`
// fetches at once when a change cannot wait.
const MinFeedRefresh = time.Minute

func (c *checker) duration(path string, d time.Duration, min time.Duration) {
	if d < min {
		c.add(path, "must be at least %s, got %s", min, d)
	}
}

func (c *checker) oneOf(path, val string, allowed ...string) {
	if !slices.Contains(allowed, val) {
		c.add(path, "%q is not one of %s", val, strings.Join(allowed, ", "))
	}
}

// name checks that a name is well formed and not used twice; it reports
// whether the name is usable.
func (c *checker) name(path string, seen map[string]string, name, what string) bool {
	if !nameRE.MatchString(name) {
		c.add(path, "%q must be lowercase letters, digits, '-' or '_'", name)
		return false
	}
	if prev, ok := seen[name]; ok {
		c.add(path, "duplicate %s %q (also at %s)", what, name, prev)
		return false
	}
	seen[name] = path
	return true
}

// validate reports every problem of a decoded configuration.
func (cfg *Config) validate() Problems {
	c := &checker{}
	e := cfg.Enforcement
	c.oneOf("enforcement.xdp", e.XDP, string(policy.XDPAuto), string(policy.XDPNative), string(policy.XDPGeneric), string(policy.XDPOff))
	c.oneOf("enforcement.mode", e.Mode, string(policy.ModeListeners), string(policy.ModeStrict))
	if e.XDP != string(policy.XDPOff) {
		if cfg.Interface == "" {
			c.add("interface", "required when enforcement.xdp is not off")
		} else if !ifnameRE.MatchString(cfg.Interface) {
			c.add("interface", "%q is not a valid interface name", cfg.Interface)
		}
	}
	if e.Forward && e.Mode == string(policy.ModeStrict) && cfg.Interface == "" {
		c.add("enforcement.forward", "in strict mode the forward chain needs interface (the outside): without it internal hosts could not open connections through the appliance")
	}
	if e.Workers < 0 || e.Workers > MaxWorkers {
		c.add("enforcement.workers", "want 0 (one per CPU) to %d, got %d", MaxWorkers, e.Workers)
	}
	if e.Privsep && (e.WorkerUser == "" || e.WorkerUser == "root" || e.WorkerUser == "0") {
		c.add("enforcement.worker_user", "the proxy workers need a user of their own, not %q", e.WorkerUser)
	}
	if e.XDP != string(policy.XDPOff) && !strings.HasPrefix(e.PinDir, "/") {
		c.add("enforcement.pin_dir", "must be an absolute path on a bpffs mount, got %q", e.PinDir)
	}
	if cfg.StateDir == "" || !strings.HasPrefix(cfg.StateDir, "/") {
		c.add("state_dir", "must be an absolute path, got %q", cfg.StateDir)
	}
	c.duration("shutdown_grace", cfg.ShutdownGrace, 0)
	if cfg.AdminSocket != "" && !strings.HasPrefix(cfg.AdminSocket, "/") {
		c.add("admin_socket", "must be an absolute path or empty, got %q", cfg.AdminSocket)
	}
	pairs := 0
	for i, m := range e.Management {
		p := fmt.Sprintf("enforcement.management[%d]", i)
		pairs += len(m.Ports)
		if _, err := parsePrefix(m.CIDR); err != nil {
			c.add(p+".cidr", "%v", err)
		}
		if len(m.Ports) == 0 {
			c.add(p+".ports", "at least one port is required")
		}
		for j, port := range m.Ports {
			if port == 0 {
				c.add(fmt.Sprintf("%s.ports[%d]", p, j), "port 0 is not a port")
			}
		}
	}
	// The XDP filter keeps every (range, port) pair in its generation
	// header; run would refuse more at the first apply.
	if e.XDP != string(policy.XDPOff) && pairs > policy.MaxManagementPairs {
		c.add("enforcement.management", "%d range and port pairs, but the XDP filter holds at most %d (count every port of every range; merge ranges or set enforcement.xdp off)",
			pairs, policy.MaxManagementPairs)
	}
	if sb := e.ScanBlock; sb.DistinctPorts != 0 {
		if sb.DistinctPorts < 2 || sb.DistinctPorts > 65535 {
			c.add("enforcement.scan_block.distinct_ports", "must be 0 (off) or 2..65535, got %d", sb.DistinctPorts)
		}
		c.duration("enforcement.scan_block.window", sb.Window, time.Second)
		c.duration("enforcement.scan_block.block_for", sb.BlockFor, time.Second)
	}
	if _, err := ParseRate(e.NewConnRate.PerSource); err != nil {
		c.add("enforcement.new_conn_rate.per_source", "%v", err)
	}
	if _, _, err := net.SplitHostPort(cfg.Metrics.Listen); err != nil {
		c.add("metrics.listen", "not host:port: %v", err)
	} else if _, err := parseListen(cfg.Metrics.Listen); err != nil {
		c.add("metrics.listen", "%v", err)
	}
	// A coarser source would let one forged scan block, or one rate
	// limit throttle, a whole provider's range.
	if sp := e.SourcePrefix; sp.V4 < 16 || sp.V4 > 32 {
		c.add("enforcement.source_prefix.v4", "must be 16..32, got %d (32: one address is one source; below 16 one forged scan would block a whole provider)", sp.V4)
	}
	if sp := e.SourcePrefix; sp.V6 < 32 || sp.V6 > 128 {
		c.add("enforcement.source_prefix.v6", "must be 32..128, got %d (64: one /64 is one machine; below 32 one forged scan would block a whole provider)", sp.V6)
	}
	cfg.validateStaticRanges(c)
	c.oneOf("tls.crl_stale", cfg.TLS.CRLStale, string(policy.CRLStaleFail), string(policy.CRLStaleWarn))
	if r := cfg.TLS.TicketRotation; r < time.Minute || r > maxTicketRotation {
		c.add("tls.ticket_rotation", "must be between 1m and %s, got %s", maxTicketRotation, r)
	}
	if k := cfg.TLS.TicketKeys; k != "" && !filepath.IsAbs(k) {
		c.add("tls.ticket_keys", "must be an absolute path, got %q", k)
	}
	cfg.validateFeeds(c)
	tenants := cfg.validateTenants(c)
	cfg.validateListeners(c)
	cfg.validateRoles(c, tenants)
	cfg.validateAccess(c, tenants)
	cfg.validateBGP(c)
	cfg.validateFleet(c)
	cfg.validateLimits(c)
	if cfg.Rules.MinPrefix.V4 < 0 || cfg.Rules.MinPrefix.V4 > 32 {
		c.add("rules.min_prefix.v4", "must be 0..32, got %d", cfg.Rules.MinPrefix.V4)
	}
	if cfg.Rules.MinPrefix.V6 < 0 || cfg.Rules.MinPrefix.V6 > 128 {
		c.add("rules.min_prefix.v6", "must be 0..128, got %d", cfg.Rules.MinPrefix.V6)
	}
	for i, s := range cfg.Rules.ReservedExempt {
		if _, err := parsePrefix(s); err != nil {
			c.add(fmt.Sprintf("rules.reserved_exempt[%d]", i), "%v", err)
		}
	}
	return c.problems
}

func (cfg *Config) validateTenants(c *checker) map[string]bool {
	ids := map[string]string{}
	known := map[string]bool{}
	if len(cfg.Tenants) == 0 {
		// Also: policy.CheckListeners judges routes by the tenants there are.
		c.add("tenants", "at least one tenant is required: without one no client certificate is accepted")
	}
	for i, t := range cfg.Tenants {
		p := fmt.Sprintf("tenants[%d]", i)
		if why, ok := policy.ReservedTenantIDs[t.ID]; ok {
			c.add(p+".id", "%q is reserved: it is %s", t.ID, why)
			known[t.ID] = true // its routes are not reported as well
		} else if c.name(p+".id", ids, t.ID, "tenant") {
			known[t.ID] = true
		}
		c.file(p+".client_ca", t.ClientCA, true)
		c.file(p+".intermediates", t.Intermediates, false)
		c.file(p+".crl", t.CRL, false)
		validateIdentities(c, p, t.Identities)
		validateEnvironments(c, p, t)
	}
	return known
}

// validateIdentities checks a tenant's or connector's identity list.
func validateIdentities(c *checker, p string, ids Identities) {
	for j, fp := range ids.FingerprintsSHA256 {
		if !hexSHA256.MatchString(normaliseHex(fp)) {
			c.add(fmt.Sprintf("%s.identities.fingerprints_sha256[%d]", p, j), "%q is not a SHA-256 in hex", fp)
		}
	}
	for j, fp := range ids.SPKISHA256 {
		if !hexSHA256.MatchString(normaliseHex(fp)) {
			c.add(fmt.Sprintf("%s.identities.spki_sha256[%d]", p, j), "%q is not a SHA-256 in hex", fp)
		}
	}
	for j, u := range ids.URISAN {
		if u == "" || strings.ContainsAny(u, " \t") {
			c.add(fmt.Sprintf("%s.identities.uri_san[%d]", p, j), "%q is not a URI pattern", u)
		}
	}
	for key, list := range map[string][]string{"dns_san": ids.DNSSAN, "cn": ids.CN, "ou": ids.OU} {
		for j, v := range list {
			if strings.TrimSpace(v) == "" {
				c.add(fmt.Sprintf("%s.identities.%s[%d]", p, key, j), "empty: it would match every certificate without a %s", key)
			}
		}
	}
}

// normaliseHex accepts fingerprints as openssl prints them (AA:BB:…) too.
func normaliseHex(s string) string {
	return strings.ToLower(strings.ReplaceAll(s, ":", ""))
}

func (cfg *Config) validateListeners(c *checker) {
	names := map[string]string{}
	ports := map[uint16]string{}
	var protos []string
	for _, p := range policy.Protocols {
		protos = append(protos, string(p))
	}
	for i, l := range cfg.Listeners {
		p := fmt.Sprintf("listeners[%d]", i)
		c.name(p+".name", names, l.Name, "listener")
		if ap, err := parseListen(l.Listen); err != nil {
			c.add(p+".listen", "%v", err)
		} else {
			// Stricter than the proxy's one address per listener: the
			// kernel layers police ports, whatever the address.
			port := ap.Port()
			if prev, ok := ports[port]; ok {
				c.add(p+".listen", "port %d is already used by %s", port, prev)
			} else {
				ports[port] = p
			}
		}
		c.oneOf(p+".protocol", l.Protocol, protos...)
		c.file(p+".server_cert", l.ServerCert, true)
		c.file(p+".server_key", l.ServerKey, true)
		for j, ck := range l.ExtraCerts {
			c.file(fmt.Sprintf("%s.extra_certs[%d].cert", p, j), ck.Cert, true)
			c.file(fmt.Sprintf("%s.extra_certs[%d].key", p, j), ck.Key, true)
		}
		for j, r := range l.Routes {
			validateRouteFile(c, fmt.Sprintf("%s.routes[%d]", p, j), policy.Protocol(l.Protocol), r)
		}
	}
	if len(cfg.Listeners) == 0 {
		c.add("listeners", "at least one listener is required")
	}
	// Everything else of listeners and routes is the policy's to judge
	// (policy.CheckListeners): the proxies refuse the same. Here it only
	// gains its key path; a path already reported above keeps its problem.
	for _, e := range cfg.Policy().CheckListeners() {
		path := fmt.Sprintf("listeners[%d]", e.Listener)
		if e.Route >= 0 {
			path += fmt.Sprintf(".routes[%d]", e.Route)
		}
		if e.Field != "" {
			path += "." + e.Field
		}
		c.addOnce(path, "%s", e.Msg)
	}
}

func routePath(proto policy.Protocol, path string) string {
	if proto == policy.ProtoHTTPS || proto == policy.ProtoSOAP {
		if path == "" {
			return "/"
		}
	}
	return path
}

// validateRouteFile checks what of a route the policy cannot see: how the
// file writes it (backend or backends, an explicit refuse_auto_sign_on),
// the files it names, and the configuration's own floor of health checks.
func validateRouteFile(c *checker, rp string, proto policy.Protocol, r Route) {
	if r.Backend != "" && len(r.Backends) > 0 {
		c.add(rp+".backends", "give either backend or backends, not both")
	}
	if r.RefuseAutoSignOn != nil && *r.RefuseAutoSignOn && proto != policy.ProtoTN5250 {
		c.add(rp+".refuse_auto_sign_on", "does not apply to a %s listener", proto)
	}
	// The proxy takes any positive period; an operator's under a second
	// only loads the backend.
	if r.HealthInterval != 0 && r.HealthInterval < time.Second {
		c.add(rp+".health_interval", "must be at least 1s, got %s", r.HealthInterval)
	}
	c.file(rp+".backend_ca", r.BackendCA, false)
	c.file(rp+".backend_cert", r.BackendCert, false)
	c.file(rp+".backend_key", r.BackendKey, r.BackendCert != "")
}

// parseListen parses ":443" or "addr:port" into an AddrPort whose address is
// invalid for "every address".
func parseListen(s string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q is not [address]:port", s)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return netip.AddrPort{}, fmt.Errorf("%q: port must be 1..65535", s)
	}
	if host == "" {
		return netip.AddrPortFrom(netip.Addr{}, uint16(n)), nil
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q: listen on an IP address, not a name", s)
	}
	return netip.AddrPortFrom(a, uint16(n)), nil
}

// parsePrefix parses a CIDR and insists it is canonical: an admin who wrote
// 192.0.2.1/24 probably meant something else, so it is refused, not masked.
func parsePrefix(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(strings.TrimSpace(s))
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR prefix", s)
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("%q: write IPv4 prefixes in dotted form, not as IPv4-mapped IPv6", s)
	}
	if p.Addr().Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q: zones are not allowed", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%q has host bits set (did you mean %s?)", s, p.Masked())
	}
	return p, nil
}

// ParseRate parses "50/s" or "3000/m" (also "/second", "/minute"); "" means
// no limit.
func ParseRate(s string) (policy.Rate, error) {
	if s == "" {
		return policy.Rate{}, nil
	}
	num, unit, ok := strings.Cut(s, "/")
	n, err := strconv.ParseUint(strings.TrimSpace(num), 10, 32)
	if !ok || err != nil || n == 0 {
		return policy.Rate{}, fmt.Errorf("%q is not a rate like 50/s or 3000/m", s)
	}
	switch strings.TrimSpace(unit) {
	case "s", "second":
		return policy.Rate{PerSecond: uint32(n)}, nil
	case "m", "minute":
		if n%60 != 0 {
			return policy.Rate{}, fmt.Errorf("%q: a per-minute rate must be a multiple of 60 (the kernel layers count per second)", s)
		}
		return policy.Rate{PerSecond: uint32(n / 60)}, nil
	}
	return policy.Rate{}, fmt.Errorf("%q: unit must be s or m", s)
}
