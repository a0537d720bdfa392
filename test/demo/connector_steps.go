package main

import (
	"context"
	"fmt"
	"regexp"
	"strings"
)

// runConnectorSteps shows, one progress line each, the tenant served
// through gateway → tunnel → connector by a site that opens no inbound
// port, every time with a real client in the cloud namespace.
func (d *demo) runConnectorSteps(ctx context.Context) {
	d.section("A site with no inbound port serves its tenant (real clients, gateway → tunnel → connector)")
	steps := []struct {
		name string
		fn   func(context.Context) (string, error)
	}{
		{"cloud tenant acme with its client certificate reaches its internal HTTPS backend through the tunnel", d.viaTunnel(d.stepHTTPS4)},
		{"the same request without a client certificate is refused at the gateway's TLS handshake", d.stepNoCert},
		{"SOAP call urn:acme:GetOrder is allowed through the tunnel to the SOAP service", d.viaTunnel(d.stepSOAPAllowed)},
		{"SOAP call urn:acme:DeleteOrder is refused by the connector with a SOAP Fault", d.stepSOAPRefused},
		{"a TN3270 screen is read through the tunnel with s3270", d.viaTunnel(d.stepTN3270)},
		{"a port scan of the internal network from the cloud side finds nothing open", d.stepInternalScan},
		{"`gatehouse status` shows the tunnels on both sides", d.stepTunnelStatus},
	}
	for _, s := range steps {
		if ctx.Err() != nil {
			return
		}
		detail, err := s.fn(ctx)
		if err != nil {
			d.fail(s.name, err)
			continue
		}
		d.ok("%s\n      %s", s.name, strings.ReplaceAll(strings.TrimSpace(detail), "\n", "\n      "))
	}
}

// The streams the gateway sent down a tunnel of acme and the connector
// served: each session through the tunnel counts once on both sides.
const (
	gwOpened   = `gatehouse_tunnel_streams_total\{result="opened",role="gateway",tenant="acme"\}`
	connServed = `gatehouse_tunnel_streams_total\{result="served",role="connector",tenant="acme"\}`
)

// viaTunnel runs step and then requires that the session went gateway →
// tunnel → connector: the gateway opened one more stream to acme's tunnels
// and the connector served one more.
func (d *demo) viaTunnel(step func(context.Context) (string, error)) func(context.Context) (string, error) {
	return func(ctx context.Context) (string, error) {
		opened0 := max(d.metric(ctx, gwOpened), 0)
		served0 := max(d.metricAt(ctx, "internal", connMetrics, connServed), 0)
		detail, err := step(ctx)
		if err != nil {
			return "", err
		}
		opened, err := d.waitMetric(ctx, gwOpened, opened0+1)
		if err != nil {
			return "", fmt.Errorf("gateway: %w", err)
		}
		served, err := d.waitMetricAt(ctx, "internal", connMetrics, connServed, served0+1)
		if err != nil {
			return "", fmt.Errorf("connector: %w", err)
		}
		return fmt.Sprintf("%s\nstreams: gateway opened %v → %v down acme's tunnels, connector served %v → %v",
			strings.TrimSpace(detail), opened0, opened, served0, served), nil
	}
}

// proxyRole and proxyMetrics name the daemon that holds the routes and runs
// the protocol proxies: the appliance, or the connector.
func (d *demo) proxyRole() string {
	if d.connector {
		return "internal"
	}
	return d.role()
}

func (d *demo) proxyMetrics() string {
	if d.connector {
		return connMetrics
	}
	return metricsAddr
}

// scanPorts are the ports the scan probes on each internal host: the three
// services' and the usual ones.
var scanPorts = []string{"22", "23", "80", "443", "8080", "8443"}

// stepInternalScan probes every internal host on scanPorts from the
// gateway's namespace, the one place on the cloud side with a route to the
// internal network: every probe goes unanswered, and the firewall's counter
// of dropped new inbound flows says why. The same probe from inside finds
// the services open, so the scan can see them when nothing is in the way.
func (d *demo) stepInternalScan(ctx context.Context) (string, error) {
	var targets []string
	for _, a := range []string{httpsAddr, soapAddr, tn3270Addr} {
		host, _, _ := strings.Cut(a, ":")
		for _, p := range scanPorts {
			targets = append(targets, host+":"+p)
		}
	}
	before := d.fwDropped(ctx)
	outside, err := d.cmd(ctx, "gw", selfExe(), append([]string{subProbe, "300ms"}, targets...)...)
	if err != nil {
		return "", err
	}
	tally := map[string]int{}
	for _, l := range strings.Split(strings.TrimSpace(outside), "\n") {
		if f := strings.Fields(l); len(f) >= 2 {
			tally[f[1]]++
			if f[1] != "dropped" {
				return "", fmt.Errorf("from the cloud side %s is %s: %s", f[0], f[1], outside)
			}
		}
	}
	if tally["dropped"] != len(targets) {
		return "", fmt.Errorf("want %d probes dropped, got %v", len(targets), tally)
	}
	after := d.fwDropped(ctx)
	if after < before+len(targets) {
		return "", fmt.Errorf("the firewall counted %d dropped inbound flows, want at least %d more than %d", after, len(targets), before)
	}
	inside, err := d.cmd(ctx, "internal", selfExe(), append([]string{subProbe, "300ms"}, targets...)...)
	if err != nil {
		return "", err
	}
	var open []string
	for _, l := range strings.Split(strings.TrimSpace(inside), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[1] == "open" {
			open = append(open, f[0])
		}
	}
	if len(open) != 3 {
		return "", fmt.Errorf("from inside, want the three services open, got %v", open)
	}
	return fmt.Sprintf("%d probes from %s (the cloud side's route to 203.0.113.0/24): none answered; firewall counter inbound_dropped %d → %d\n"+
		"the same probes from inside find %s open", len(targets), d.ns["gw"], before, after, strings.Join(open, ", ")), nil
}

// fwDropped reads the firewall's counter of dropped new inbound flows (-1
// when it cannot).
func (d *demo) fwDropped(ctx context.Context) int {
	out, err := d.cmd(ctx, "fw", "nft", "list", "counter", "inet", "fw", "inbound_dropped")
	if err != nil {
		return -1
	}
	m := regexp.MustCompile(`packets (\d+)`).FindStringSubmatch(out)
	if m == nil {
		return -1
	}
	var n int
	fmt.Sscan(m[1], &n)
	return n
}

// stepTunnelStatus reads `gatehouse status` of the gateway and of the
// connector: each lists the tunnels up, by tenant and by gateway.
func (d *demo) stepTunnelStatus(ctx context.Context) (string, error) {
	gw, err := d.cmd(ctx, "", d.bin, "status", "-c", d.config)
	if err != nil {
		return "", err
	}
	conn, err := d.cmd(ctx, "", d.bin, "status", "-c", d.connConfig)
	if err != nil {
		return "", err
	}
	gwLine := regexp.MustCompile(fmt.Sprintf(`(?m)^\s+%s\s+%d\s*$`, tenant, connTunnels)).FindString(gw)
	connLine := regexp.MustCompile(fmt.Sprintf(`(?m)^\s+%s\s+%d\s*$`, regexp.QuoteMeta(gwTunnelV4+":443"), connTunnels)).FindString(conn)
	switch {
	case !strings.Contains(gw, "Tunnels (gateway)") || gwLine == "":
		return "", fmt.Errorf("gateway status lacks %d tunnels of %s:\n%s", connTunnels, tenant, gw)
	case !strings.Contains(conn, "Tunnels (connector)") || connLine == "":
		return "", fmt.Errorf("connector status lacks %d tunnels to %s:443:\n%s", connTunnels, gwTunnelV4, conn)
	}
	return fmt.Sprintf("gateway:   Tunnels (gateway)   tenant %s\n"+
		"connector: Tunnels (connector) gateway %s",
		strings.Join(strings.Fields(gwLine), " up "), strings.Join(strings.Fields(connLine), " up ")), nil
}

// printConnectorStatus shows what both daemons say about themselves.
func (d *demo) printConnectorStatus(ctx context.Context) {
	for _, s := range []struct{ what, config string }{{"gateway", d.config}, {"connector", d.connConfig}} {
		d.section("gatehouse status (" + s.what + ")")
		out, err := d.cmd(ctx, "", d.bin, "status", "-c", s.config)
		if err != nil {
			d.fail("gatehouse status ("+s.what+")", err)
			continue
		}
		for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
			fmt.Fprintln(d.out, "  "+l)
		}
	}
}

// printConnectorHandsOn lists commands to try by hand while the site runs.
func (d *demo) printConnectorHandsOn() {
	ns, pki := d.ns, d.path("pki")
	d.section("Try it by hand (as root, in another terminal)")
	for _, l := range []string{
		"# the tenant's request, through gateway → tunnel → connector",
		fmt.Sprintf("ip netns exec %s curl --cacert %s/gatehouse-ca/ca.pem --cert %s/acme-cloud.pem --key %s/acme-cloud.key https://%s:%s/orders/1",
			ns["cloud"], pki, pki, pki, gateName, gwWebPort),
		"# a 3270 session (type Ascii() and Enter, then Quit())",
		fmt.Sprintf("ip netns exec %s s3270 -cafile %s/gatehouse-ca/ca.pem -certfile %s/acme-cloud.pem -keyfile %s/acme-cloud.key L:%s:992",
			ns["cloud"], pki, pki, pki, gateName),
		"# the internal network from the cloud side: nothing answers",
		fmt.Sprintf("ip netns exec %s curl --connect-timeout 3 -k https://%s/", ns["gw"], httpsAddr),
		"# the enterprise's firewall and its counter",
		fmt.Sprintf("ip netns exec %s nft list table inet fw", ns["fw"]),
		"# the tunnels, on both sides",
		fmt.Sprintf("ip netns exec %s curl -s http://%s/metrics | grep ^gatehouse_tunnel", ns["gw"], metricsAddr),
		fmt.Sprintf("ip netns exec %s curl -s http://%s/metrics | grep ^gatehouse_tunnel", ns["internal"], connMetrics),
		fmt.Sprintf("%s status -c %s", d.bin, d.config),
		fmt.Sprintf("%s status -c %s", d.bin, d.connConfig),
		fmt.Sprintf("tail -f %s %s", d.log, d.connLog),
	} {
		fmt.Fprintln(d.out, "  "+l)
	}
}
