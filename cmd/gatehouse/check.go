package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/internal/config"
	"github.com/gatehouse-dmz/gatehouse/internal/daemon"
	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/rules"
)

func newCheckCmd(g *globals) *cobra.Command {
	var printDefault, allowPrivate, asJSON, showMerged bool
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Validate the configuration and summarise what it enforces (like nginx -t)",
		Long: `check reads the configuration as "run" would, reports every problem with its key
path and exits 1, or prints a one-screen summary and exits 0. It also checks
what run would refuse at start: a state_dir (or a directory the daemon keeps
in it) it cannot use, and (XDP on) a pin_dir not on a bpffs or on one private
to this mount namespace. The namespaces are those check runs in: run it as the
service runs to get the service's answer. Nothing is changed.`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if printDefault {
				_, err := g.stdout.Write(config.Default)
				return err
			}
			cfg, err := config.Load(g.configPath, g.lookupEnv)
			if err != nil {
				var ps config.Problems
				if errors.As(err, &ps) {
					var b strings.Builder
					fmt.Fprintf(&b, "gatehouse: %s: %d problem(s):\n", g.configPath, len(ps))
					for _, p := range ps {
						fmt.Fprintf(&b, "  %s\n", p)
					}
					fmt.Fprintf(&b, "configuration %s is NOT valid", g.configPath)
					return exitError{code: 1, msg: b.String()}
				}
				return exitError{code: 1, msg: "gatehouse: " + err.Error()}
			}
			pinWarning, pinErr := daemon.CheckPinDir(cfg, allowPrivate)
			if err := errors.Join(daemon.CheckStateDir(cfg.StateDir), pinErr, checkCertificates(cfg), daemon.CheckRole(cfg), checkFeeds(cfg), daemon.CheckAccess(cfg), checkFleet(cfg)); err != nil {
				return exitError{code: 1, msg: fmt.Sprintf("gatehouse: %s: %v\nconfiguration %s is NOT valid", g.configPath, err, g.configPath)}
			}
			if pinWarning != "" {
				fmt.Fprintf(g.stderr, "gatehouse check: warning: %s\n", pinWarning)
			}
			for _, w := range cfg.AllowListWarnings() {
				fmt.Fprintf(g.stderr, "gatehouse check: warning: %s\n", w)
			}
			if showMerged {
				return printMerged(g.stdout, g.configPath, cfg)
			}
			if asJSON {
				return summariseJSON(g.stdout, g.configPath, cfg)
			}
			printSources(g.stdout, cfg)
			return summarise(g.stdout, g.configPath, cfg)
		},
	}
	cmd.Flags().BoolVar(&printDefault, "print-default", false, "print the embedded default configuration, every key commented")
	cmd.Flags().BoolVar(&showMerged, "show-merged", false, "print the configuration as run will use it (file, node overlay, environment merged), each key not from the file marked with where it came from")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the summary as JSON: listeners and routes, tenants and feeds as gatehouse status --json names them")
	cmd.Flags().BoolVar(&allowPrivate, allowPrivateFlag, false, "as gatehouse run --"+allowPrivateFlag+": accept a pin directory private to this mount namespace")
	return cmd
}

// checkCertificates loads every server certificate and key, tenant CA and
// CRL, and every route's backend CA and client certificate, exactly as the
// daemon will, in memory only (no session-ticket keys are
// written), so that a certificate the daemon would refuse fails check too.
func checkCertificates(cfg *config.Config) error {
	p := cfg.Policy()
	p.StateDir = ""
	m, err := certs.New(certs.Config{})
	if err != nil {
		return err
	}
	defer m.Close()
	if err := m.Apply(p); err != nil {
		return fmt.Errorf("certs: %w", err) // as run names the layer
	}
	// The backends' CAs and client certificates are the proxies' to load,
	// when run applies the policy: load them here too.
	return certs.CheckBackendTLS(p)
}

// checkFeeds builds every feed's verifier as the daemon will (trusted keys,
// selection, guards), without fetching anything.
func checkFeeds(cfg *config.Config) error {
	fcs, guards, err := daemon.FeedConfigs(cfg)
	if err != nil {
		return err
	}
	var errs []error
	for _, fc := range fcs {
		if _, err := rules.NewVerifier(fc, guards, time.Now); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// summarise prints what a valid configuration will enforce, on one screen.
func summarise(w io.Writer, path string, cfg *config.Config) error {
	p := cfg.Policy()
	static := rules.Aggregate(cfg.StaticPrefixes())
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "configuration %s is valid\n\n", path)

	e := p.Enforcement
	fmt.Fprintln(tw, "Enforcement")
	if e.XDP == policy.XDPOff {
		fmt.Fprintln(tw, "  xdp\toff")
	} else {
		fmt.Fprintf(tw, "  xdp\t%s on %s\n", e.XDP, p.Interface)
	}
	if e.NFTables {
		fmt.Fprintln(tw, "  nftables\ttable inet gatehouse")
	} else {
		fmt.Fprintln(tw, "  nftables\toff")
	}
	fmt.Fprintf(tw, "  mode\t%s\t%s\n", e.Mode, modeText(e.Mode))
	var ports []string
	for _, pt := range p.ProtectedPorts() {
		ports = append(ports, fmt.Sprintf("%s/%d", pt.Proto, pt.Num))
	}
	fmt.Fprintf(tw, "  protected ports\t%s\n", strings.Join(ports, ", "))
	for _, m := range e.Management {
		fmt.Fprintf(tw, "  management\t%s\tports %s\n", m.Prefix, joinPorts(m.Ports))
	}
	if e.ScanBlock.DistinctPorts > 0 {
		fmt.Fprintf(tw, "  scan block\t%d closed ports in %s\tblocked for %s\n", e.ScanBlock.DistinctPorts, e.ScanBlock.Window, e.ScanBlock.BlockFor)
	} else {
		fmt.Fprintln(tw, "  scan block\toff")
	}
	if r := e.NewConnRate; r.PerSecond > 0 {
		fmt.Fprintf(tw, "  new connections\t%d/s per source, burst %d\n", r.PerSecond, r.Burst)
	} else {
		fmt.Fprintln(tw, "  new connections\tno rate limit")
	}
	if e.MaxConnsPerSource > 0 {
		fmt.Fprintf(tw, "  concurrent\t%d per source\n", e.MaxConnsPerSource)
	}

	fmt.Fprintln(tw, "\nAdmitted sources")
	v4, v6 := splitFamilies(static)
	fmt.Fprintf(tw, "  static_ranges\t%d IPv4, %d IPv6 prefixes after aggregation\t%s\n", len(v4), len(v6), abbreviate(static, 4))
	for _, f := range cfg.Feeds {
		fmt.Fprintf(tw, "  feed %s\t%s, %d of %d signatures\t%s\n", f.Name, f.Format, f.Threshold, len(f.MinisignKeys), f.Source)
	}
	if len(static) == 0 && len(cfg.Feeds) == 0 {
		fmt.Fprintln(tw, "  (none: every source is refused on the protected ports)")
	}

	fmt.Fprintln(tw, "\nTenants")
	for _, t := range p.Tenants {
		fmt.Fprintf(tw, "  %s\n", certs.DescribeTenant(t))
	}
	fmt.Fprintln(tw, "\nTLS")
	for _, line := range certs.DescribeTLS(p.TLS) {
		fmt.Fprintf(tw, "  %s\n", line)
	}

	fmt.Fprintln(tw, "\nListeners")
	var routes []policy.Route
	for _, l := range p.Listeners {
		routes = append(routes, l.Routes...)
	}
	printListeners(tw, daemon.Routes(p), func(i int) string { return routeExtras(routes[i]) })
	summariseRole(tw, cfg)
	return tw.Flush()
}

// summariseRole says what a gateway or connector does beyond the
// listeners.
func summariseRole(w io.Writer, cfg *config.Config) {
	switch cfg.Role() {
	case config.RoleGateway:
		g := cfg.Gateway
		fmt.Fprintf(w, "\nGateway\ttunnels on %s\tkeepalive %s, dead after %s more\n", g.Listen, g.Keepalive.Interval, g.Keepalive.Timeout)
		for _, l := range cfg.Listeners {
			fmt.Fprintf(w, "  listener %s\tsends each tenant's sessions down its connectors' tunnels\n", l.Name)
		}
		for _, c := range g.Connectors {
			fmt.Fprintf(w, "  connectors of %s\tcertificates of %s\n", c.Tenant, c.ClientCA)
		}
		fmt.Fprintf(w, "  streams\t%d per tunnel, %d per tenant\n", g.StreamsPerTunnel, g.StreamsPerTenant)
	case config.RoleConnector:
		k := cfg.Connector
		via := "directly"
		if k.Proxy.Address != "" {
			via = "through the HTTP proxy " + k.Proxy.Address
		}
		fmt.Fprintf(w, "\nConnector\tof tenant %s\t%d tunnels to %s, %s\n", k.Tenant, k.Tunnels, strings.Join(k.Gateways, ", "), via)
		fmt.Fprintf(w, "  gateway CA\t%s (the only root asked)\n", k.GatewayCA)
		fmt.Fprintf(w, "  may connect to\t%s (nothing else)\n", strings.Join(k.Allow, ", "))
		for _, l := range cfg.Listeners {
			// The listener's socket and certificate are still required:
			// it is the proxy's listener the tunnels' sessions are handed
			// to by name, with TLS done at the gateway.
			fmt.Fprintf(w, "  listener %s\tserves the sessions the gateway's listener %s sends down the tunnels; it binds %s (loopback, for local tests only) and its server_cert is shown to local clients alone\n", l.Name, l.Name, l.Listen)
		}
	}
}

// checkSummary is check's summary for machines. Listeners, tenants and
// feeds are what gatehouse status --json shows of the running daemon: the
// same routes (daemon.Routes), tenant ids and feed names.
type checkSummary struct {
	Config    string                 `json:"config"`
	Listeners []daemon.ListenerRoute `json:"listeners"`
	Tenants   []string               `json:"tenants"`
	Feeds     []checkFeed            `json:"feeds"`
	Static    []string               `json:"static_ranges"`
}

type checkFeed struct {
	Name   string `json:"name"`
	Format string `json:"format"`
	Source string `json:"source"`
}

func summariseJSON(w io.Writer, path string, cfg *config.Config) error {
	p := cfg.Policy()
	s := checkSummary{Config: path, Listeners: daemon.Routes(p), Tenants: []string{}, Feeds: []checkFeed{}, Static: []string{}}
	for _, t := range p.Tenants {
		s.Tenants = append(s.Tenants, t.ID)
	}
	for _, f := range cfg.Feeds {
		s.Feeds = append(s.Feeds, checkFeed{Name: f.Name, Format: f.Format, Source: f.Source})
	}
	for _, pr := range rules.Aggregate(cfg.StaticPrefixes()) {
		s.Static = append(s.Static, pr.String())
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(s)
}

func modeText(m policy.Mode) string {
	if m == policy.ModeStrict {
		return "(new inbound flows dropped except listeners and management)"
	}
	return "(only the listeners' ports are policed)"
}

func routeExtras(r policy.Route) string {
	var parts []string
	if len(r.Backends) > 1 {
		parts = append(parts, "also "+strings.Join(r.Backends[1:], " "))
	}
	if r.HealthPath != "" {
		parts = append(parts, fmt.Sprintf("health %s every %s", r.HealthPath, r.HealthInterval))
	}
	if len(r.SOAPActions) > 0 {
		parts = append(parts, "actions "+strings.Join(r.SOAPActions, " "))
	}
	if r.AllowWSDL {
		parts = append(parts, "WSDL allowed")
	}
	if r.WebSocket {
		parts = append(parts, "WebSocket allowed")
	}
	if len(r.LUNames) > 0 {
		parts = append(parts, "LU "+strings.Join(r.LUNames, " "))
	}
	if r.ForceLU != "" {
		parts = append(parts, "forced LU "+r.ForceLU)
	}
	if len(r.DevNames) > 0 {
		parts = append(parts, "DEVNAME "+strings.Join(r.DevNames, " "))
	}
	if r.AllowsAutoSignOn {
		parts = append(parts, "auto sign-on once the terminal type is accepted")
	}
	if len(r.TerminalTypes) > 0 {
		parts = append(parts, "terminals "+strings.Join(r.TerminalTypes, " "))
	}
	if r.BackendCA != "" || r.BackendTLS {
		parts = append(parts, "backend TLS verified")
	}
	return strings.Join(parts, "; ")
}

func joinPorts(ports []uint16) string {
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = fmt.Sprint(p)
	}
	return strings.Join(s, ",")
}

func splitFamilies(list []netip.Prefix) (v4, v6 []netip.Prefix) {
	for _, p := range list {
		if p.Addr().Is4() {
			v4 = append(v4, p)
		} else {
			v6 = append(v6, p)
		}
	}
	return v4, v6
}

func abbreviate(list []netip.Prefix, n int) string {
	var s []string
	for i, p := range list {
		if i == n {
			s = append(s, fmt.Sprintf("… %d more", len(list)-n))
			break
		}
		s = append(s, p.String())
	}
	return strings.Join(s, " ")
}
