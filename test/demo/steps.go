package main

import (
	"github.com/gatehouse-dmz/gatehouse/test/tn3270host"

	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// runSteps shows, one progress line each, what gatehouse admits and
// refuses, every time with a real client in the cloud or intruder
// namespace. A failed step prints ✘ with the reason and the next step runs.
func (d *demo) runSteps(ctx context.Context) {
	d.section("What gatehouse admits and refuses (real clients, real kernel filters)")
	steps := []struct {
		name string
		fn   func(context.Context) (string, error)
	}{
		{"the kernel filters are in place: XDP on the outside veth, table inet gatehouse with the feed's ranges", d.stepKernel},
		{"cloud tenant acme with its client certificate reaches its HTTPS backend (IPv4)", d.stepHTTPS4},
		{"cloud tenant acme reaches its HTTPS backend over IPv6", d.stepHTTPS6},
		{"the same request without a client certificate is refused at the TLS handshake", d.stepNoCert},
		{"the intruder's connection is dropped by XDP before any socket sees it", d.stepIntruder},
		{"SOAP call urn:acme:GetOrder is allowed through to the SOAP service", d.stepSOAPAllowed},
		{"SOAP call urn:acme:DeleteOrder is refused by gatehouse with a SOAP Fault", d.stepSOAPRefused},
		{"a TN3270 screen is read through the proxy with s3270", d.stepTN3270},
		{"the intruder's port scan gets it blocked", d.stepScan},
		{"a tenant viewer's `gatehouse status` over the admin endpoint shows tenant acme only, next to the global admin's", d.stepViewerStatus},
		{"what `gatehouse check --json` promises is what `gatehouse status --json` reports: listeners, routes, tenants, feeds", d.stepSummary},
	}
	for _, s := range steps {
		if ctx.Err() != nil {
			return
		}
		if s.fn == nil {
			continue
		}
		detail, err := s.fn(ctx)
		switch {
		case err != nil:
			d.fail(s.name, err)
		default:
			d.ok("%s\n      %s", s.name, strings.ReplaceAll(strings.TrimSpace(detail), "\n", "\n      "))
		}
	}
}

// curl runs curl in role's namespace and returns its output and exit code
// (0 on success; -1 when it could not run at all).
func (d *demo) curl(ctx context.Context, role string, args ...string) (string, int) {
	c := d.command(ctx, role, "curl", append([]string{"-sS"}, args...)...)
	out, err := c.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	}
	return err.Error(), -1
}

// tenantTLS are curl's arguments for the tenant: trust the gatehouse CA,
// present the acme client certificate.
func (d *demo) tenantTLS() []string {
	return []string{"--cacert", d.path("pki/gatehouse-ca/ca.pem"),
		"--cert", d.path("pki/acme-cloud.pem"), "--key", d.path("pki/acme-cloud.key")}
}

// Step 0: what the daemon put into the kernel, read back with the
// kernel's own tools.
func (d *demo) stepKernel(ctx context.Context) (string, error) {
	xdp, err := d.cmd(ctx, "dmz", "bpftool", "net", "show", "dev", outsideIf)
	if err != nil {
		return "", err
	}
	if !strings.Contains(xdp, "xdp") {
		return "", fmt.Errorf("no XDP program on %s:\n%s", outsideIf, xdp)
	}
	set, err := d.cmd(ctx, "dmz", "nft", "list", "set", "inet", "gatehouse", "admitted_v4")
	if err != nil {
		return "", err
	}
	if !strings.Contains(set, feedV4) {
		return "", fmt.Errorf("admitted_v4 lacks the feed's %s:\n%s", feedV4, set)
	}
	var line string
	for _, l := range strings.Split(xdp, "\n") {
		if strings.Contains(l, outsideIf) && strings.Contains(l, "id") {
			line = strings.TrimSpace(l)
			break
		}
	}
	return fmt.Sprintf("bpftool net show dev %s: %s\nnft list set inet gatehouse admitted_v4: %s", outsideIf, line, elements(set)), nil
}

// Step 1 and 2: curl --cert from the cloud; the backend answers with the
// tenant gatehouse proved and the cloud's own address.
func (d *demo) stepHTTPS4(ctx context.Context) (string, error) {
	return d.https(ctx, "-4", cloudV4)
}

func (d *demo) stepHTTPS6(ctx context.Context) (string, error) {
	return d.https(ctx, "-6", cloudV6)
}

func (d *demo) https(ctx context.Context, family, src string) (string, error) {
	args := append([]string{family, "--max-time", "10"}, d.tenantTLS()...)
	url := "https://" + gateName + "/orders/42"
	if d.connector {
		url = "https://" + gateName + ":" + gwWebPort + "/orders/42"
	}
	out, code := d.curl(ctx, "cloud", append(args, url)...)
	if code != 0 {
		return "", fmt.Errorf("curl exit %d: %s", code, strings.TrimSpace(out))
	}
	want := fmt.Sprintf("tenant=%s client=%s", tenant, src)
	if !strings.Contains(out, want) {
		return "", fmt.Errorf("backend answer lacks %q: %s", want, out)
	}
	return "curl " + family + " --cert acme-cloud.pem " + url + " → " + out, nil
}

// Step 3: no client certificate. The handshake fails at once (no
// timeout: the SYN was admitted, TLS refused), and the daemon counts it.
func (d *demo) stepNoCert(ctx context.Context) (string, error) {
	url := "https://" + gateName + "/orders/42"
	if d.connector {
		url = "https://" + gateName + ":" + gwWebPort + "/orders/42"
	}
	out, code := d.curl(ctx, "cloud", "-4", "--max-time", "10", "--cacert", d.path("pki/gatehouse-ca/ca.pem"), url)
	switch code {
	case 0:
		return "", fmt.Errorf("request without a client certificate succeeded: %s", out)
	case 28:
		return "", fmt.Errorf("timed out instead of a refused handshake: %s", out)
	}
	// The web listener's series: every listener has one, at 0 from the start.
	n, err := d.waitMetric(ctx, `gatehouse_tls_handshakes_total\{listener="web",result="no_cert"[^}]*\}`, 1)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("curl exit %d: %s\ngatehouse_tls_handshakes_total{listener=\"web\",result=\"no_cert\"} = %v",
		code, strings.TrimSpace(out), n), nil
}

// Step 4: the intruder's SYN to :443 never gets an answer; the XDP
// counter of not-admitted drops says why.
func (d *demo) stepIntruder(ctx context.Context) (string, error) {
	before := d.metric(ctx, xdpNotAdmitted)
	out, code := d.curl(ctx, "intruder", "-4", "--connect-timeout", "2", "-k", "https://"+gateName+"/")
	if code != 28 {
		return "", fmt.Errorf("want a timeout (curl exit 28), got exit %d: %s", code, strings.TrimSpace(out))
	}
	n, err := d.waitMetric(ctx, xdpNotAdmitted, max(before, 0)+1)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("curl from %s: %s\ngatehouse_xdp_packets_total{action=\"drop\",reason=\"not_admitted\"} = %v",
		intruderV4, strings.TrimSpace(out), n), nil
}

const xdpNotAdmitted = `gatehouse_xdp_packets_total\{action="drop",reason="not_admitted"\}`

// soapEnvelope is a SOAP 1.1 request for operation op.
func soapEnvelope(op string) string {
	return `<?xml version="1.0"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>` +
		`<` + op + ` xmlns="urn:acme"><id>42</id></` + op + `></soap:Body></soap:Envelope>`
}

func (d *demo) soap(ctx context.Context, op string) (string, int) {
	args := append([]string{"-4", "--max-time", "10", "-i"}, d.tenantTLS()...)
	args = append(args, "-H", "Content-Type: text/xml; charset=utf-8", "-H", "SOAPAction: \"urn:acme:"+op+"\"",
		"--data-binary", soapEnvelope(op), "https://"+gateName+":8443/orders")
	return d.curl(ctx, "cloud", args...)
}

// Step 5: the allowed operation reaches the service.
func (d *demo) stepSOAPAllowed(ctx context.Context) (string, error) {
	out, code := d.soap(ctx, "GetOrder")
	if code != 0 || !strings.Contains(out, " 200") || !strings.Contains(out, "<GetOrderResponse") {
		return "", fmt.Errorf("curl exit %d: %s", code, strings.TrimSpace(out))
	}
	return "SOAPAction urn:acme:GetOrder → HTTP 200 " + body(out), nil
}

// Step 6: an operation outside the route's allow-list gets gatehouse's
// own Fault (with its correlation id); the service never sees it.
func (d *demo) stepSOAPRefused(ctx context.Context) (string, error) {
	out, code := d.soap(ctx, "DeleteOrder")
	if code != 0 {
		return "", fmt.Errorf("curl exit %d: %s", code, strings.TrimSpace(out))
	}
	if !strings.Contains(out, "Fault") || !strings.Contains(strings.ToLower(out), "x-correlation-id") {
		return "", fmt.Errorf("want gatehouse's SOAP Fault with X-Correlation-Id, got: %s", out)
	}
	status := strings.SplitN(out, "\n", 2)[0]
	// Every reason has its series from the start: read this refusal's.
	// The SOAP inspection runs where the routes are: the connector's, with
	// --connector.
	n, err := d.waitMetricAt(ctx, d.proxyRole(), d.proxyMetrics(), `gatehouse_soap_rejections_total\{reason="action_not_allowed",tenant="acme"\}`, 1)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("SOAPAction urn:acme:DeleteOrder → %s %s\ngatehouse_soap_rejections_total{reason=\"action_not_allowed\",tenant=\"acme\"} = %v",
		strings.TrimSpace(status), body(out), n), nil
}

// body returns the body of curl -i output, shortened for a progress line.
func body(out string) string {
	if i := strings.Index(out, "\r\n\r\n"); i >= 0 {
		out = out[i+4:]
	}
	out = strings.TrimSpace(out)
	if len(out) > 160 {
		out = out[:160] + "…"
	}
	return out
}

// Step 7: s3270 in the cloud connects with implicit TLS (L:), presenting
// the tenant's certificate, and prints the host's screen.
func (d *demo) stepTN3270(ctx context.Context) (string, error) {
	script := fmt.Sprintf("Connect(L:%s:992)\nWait(15,InputField)\nAscii()\nDisconnect()\nQuit()\n", gateName)
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c := d.command(tctx, "cloud", "s3270", "-cafile", d.path("pki/gatehouse-ca/ca.pem"),
		"-certfile", d.path("pki/acme-cloud.pem"), "-keyfile", d.path("pki/acme-cloud.key"), "-connecttimeout", "10")
	c.Stdin = strings.NewReader(script)
	out, err := c.CombinedOutput()
	if err != nil || !strings.Contains(string(out), tn3270host.ScreenTitle) {
		return "", fmt.Errorf("s3270: %v: %s", err, strings.TrimSpace(string(out)))
	}
	var screen []string
	for _, l := range strings.Split(string(out), "\n") {
		if s, ok := strings.CutPrefix(l, "data: "); ok && strings.TrimSpace(s) != "" {
			screen = append(screen, "│ "+strings.TrimRight(s, " "))
		}
	}
	return fmt.Sprintf("s3270 Connect(L:%s:992) through the %s listener, screen read:\n%s",
		gateName, "tn3270", strings.Join(screen, "\n")), nil
}

// Step 8: the intruder tries 20 closed ports, 0.2 s each. nftables' scan
// detection blocks it after 10 distinct ports: the first answers are
// resets, the rest go unanswered, and its address is in blocked_v4.
func (d *demo) stepScan(ctx context.Context) (string, error) {
	const first, count = 2000, 20
	out, err := d.cmd(ctx, "intruder", selfExe(), subScan, gateV4, strconv.Itoa(first), strconv.Itoa(count), "200ms")
	if err != nil {
		return "", err
	}
	tally := map[string]int{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Fields(l); len(f) >= 2 {
			tally[f[1]]++
		}
	}
	n, err := d.waitMetric(ctx, `gatehouse_nft_blocked_sources`, 1)
	if err != nil {
		return "", fmt.Errorf("%w (scan: %v)", err, tally)
	}
	set, err := d.cmd(ctx, "dmz", "nft", "list", "set", "inet", "gatehouse", "blocked_v4")
	if err != nil {
		return "", err
	}
	if !strings.Contains(set, intruderV4) {
		return "", fmt.Errorf("%s not in blocked_v4:\n%s", intruderV4, set)
	}
	if tally["dropped"] == 0 {
		return "", fmt.Errorf("no probe went unanswered after the block: %v", tally)
	}
	return fmt.Sprintf("%d ports from %s: %d refused (reset), then %d dropped once blocked\n"+
		"gatehouse_nft_blocked_sources = %v; nft list set inet gatehouse blocked_v4: %s",
		count, intruderV4, tally["refused"], tally["dropped"], n, elements(set)), nil
}

// elements picks the "elements = { … }" part of an nft set listing.
func elements(set string) string {
	if m := regexp.MustCompile(`(?s)elements = \{(.*?)\}`).FindStringSubmatch(set); m != nil {
		return "{" + strings.Join(strings.Fields(m[1]), " ") + " }"
	}
	return "(empty)"
}

// metric reads the daemon's /metrics from inside the dmz and returns the
// sum of the series matching re (-1 when none does).
func (d *demo) metric(ctx context.Context, re string) float64 {
	return d.metricAt(ctx, d.role(), metricsAddr, re)
}

// metricAt is metric on the daemon whose metrics endpoint is addr in role's
// namespace.
func (d *demo) metricAt(ctx context.Context, role, addr, re string) float64 {
	out, code := d.curl(ctx, role, "--max-time", "3", "http://"+addr+"/metrics")
	if code != 0 {
		return -1
	}
	// Series the configuration determines exist at 0 from the start: the
	// sum of every series that matches is what happened.
	all := regexp.MustCompile("(?m)^"+re+` ([0-9.e+]+)$`).FindAllStringSubmatch(out, -1)
	if all == nil {
		return -1
	}
	var sum float64
	for _, m := range all {
		v, _ := strconv.ParseFloat(m[1], 64)
		sum += v
	}
	return sum
}

// waitMetric waits up to 5 s for the series to reach min (counters are
// read from the kernel on scrape, so this is at most a scrape or two).
func (d *demo) waitMetric(ctx context.Context, re string, min float64) (float64, error) {
	return d.waitMetricAt(ctx, d.role(), metricsAddr, re, min)
}

// waitMetricAt is waitMetric on the daemon whose metrics endpoint is addr
// in role's namespace.
func (d *demo) waitMetricAt(ctx context.Context, role, addr, re string, min float64) (float64, error) {
	var v float64
	if waitUntil(ctx, 5*time.Second, func() bool { v = d.metricAt(ctx, role, addr, re); return v >= min }) {
		return v, nil
	}
	return v, fmt.Errorf("metric %s = %v, want ≥ %v", strings.ReplaceAll(re, `\`, ""), v, min)
}

// printStatus shows what the running daemon says about itself.
func (d *demo) printStatus(ctx context.Context) {
	d.section("gatehouse status")
	out, err := d.cmd(ctx, "", d.bin, "status", "-c", d.config)
	if err != nil {
		d.fail("gatehouse status", err)
		return
	}
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		fmt.Fprintln(d.out, "  "+l)
	}
}

// printHandsOn lists commands to try by hand while the demo runs.
func (d *demo) printHandsOn() {
	ns := d.ns
	pki := d.path("pki")
	d.section("Try it by hand (as root, in another terminal)")
	lines := []string{
		"# the tenant's request, and the same without a certificate",
		fmt.Sprintf("ip netns exec %s curl --cacert %s/gatehouse-ca/ca.pem --cert %s/acme-cloud.pem --key %s/acme-cloud.key https://%s/orders/1",
			ns["cloud"], pki, pki, pki, gateName),
		fmt.Sprintf("ip netns exec %s curl --cacert %s/gatehouse-ca/ca.pem https://%s/", ns["cloud"], pki, gateName),
		"# the intruder: dropped by XDP",
		fmt.Sprintf("ip netns exec %s curl --connect-timeout 3 -k https://%s/", ns["intruder"], gateName),
	}
	lines = append(lines, "# a 3270 session (type Ascii() and Enter, then Quit())",
		fmt.Sprintf("ip netns exec %s s3270 -cafile %s/gatehouse-ca/ca.pem -certfile %s/acme-cloud.pem -keyfile %s/acme-cloud.key L:%s:992",
			ns["cloud"], pki, pki, pki, gateName))
	lines = append(lines,
		"# the kernel state",
		fmt.Sprintf("ip netns exec %s nft list table inet gatehouse", ns["dmz"]),
		fmt.Sprintf("ip netns exec %s nft list set inet gatehouse blocked_v4", ns["dmz"]),
		fmt.Sprintf("ip netns exec %s bpftool net show dev %s", ns["dmz"], outsideIf),
		fmt.Sprintf("ip netns exec %s curl -s http://%s/metrics | grep ^gatehouse_", ns["dmz"], metricsAddr),
		"# the daemon",
		fmt.Sprintf("%s status -c %s", d.bin, d.config),
		fmt.Sprintf("tail -f %s", d.log),
	)
	for _, l := range lines {
		fmt.Fprintln(d.out, "  "+l)
	}
}

func selfExe() string {
	p, err := os.Executable()
	if err != nil {
		return "/proc/self/exe"
	}
	return p
}
