package test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/internal/testkit"

	"aead.dev/minisign"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.yaml.in/yaml/v3"

	"github.com/gatehouse-dmz/gatehouse/internal/config"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// The deployment files live in deploy/ at the repository root; go test runs
// in test/.
const deployDir = "../deploy"

// runTool runs a program with a time bound and returns its combined output.
func runTool(t *testing.T, stdin []byte, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func readDeployFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(deployDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// --- the Prometheus rules ---------------------------------------------------

func TestDeployAlertRulesCheck(t *testing.T) {
	promtool := netns.RequireTool(t, "promtool", "prometheus")
	out, err := runTool(t, nil, promtool, "check", "rules", filepath.Join(deployDir, "prometheus-alerts.yaml"))
	if err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool check rules did not report success:\n%s", out)
	}
}

// TestDeployAlertRulesFire runs the alerts against synthetic series with
// promtool's rule unit tests: each alert fires when it should and stays
// quiet on a healthy appliance.
func TestDeployAlertRulesFire(t *testing.T) {
	promtool := netns.RequireTool(t, "promtool", "prometheus")
	rules := parseAlertRules(t)
	// promtool compares annotations verbatim, so the cases run on a copy
	// without them; TestDeployAlertAnnotations checks them instead.
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			delete(r, "annotations")
		}
	}
	stripped, err := yaml.Marshal(rules)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "prometheus-alerts.yaml"), stripped, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := readDeployFile(t, "prometheus-alerts-test.yaml")
	if err := os.WriteFile(filepath.Join(dir, "prometheus-alerts-test.yaml"), tests, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := runTool(t, nil, promtool, "test", "rules", filepath.Join(dir, "prometheus-alerts-test.yaml"))
	if err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}

// alertRules is a Prometheus rules file, each rule kept as a generic map so
// that nothing is lost when it is written back.
type alertRules struct {
	Groups []struct {
		Name  string           `yaml:"name"`
		Rules []map[string]any `yaml:"rules"`
	} `yaml:"groups"`
}

func parseAlertRules(t *testing.T) alertRules {
	t.Helper()
	var r alertRules
	if err := yaml.Unmarshal(readDeployFile(t, "prometheus-alerts.yaml"), &r); err != nil {
		t.Fatalf("prometheus-alerts.yaml: %v", err)
	}
	return r
}

// Every alert tells the admin what happened and what to do, and carries a
// severity a router can use.
func TestDeployAlertAnnotations(t *testing.T) {
	n := 0
	for _, g := range parseAlertRules(t).Groups {
		for _, r := range g.Rules {
			name, _ := r["alert"].(string)
			if name == "" {
				continue
			}
			n++
			ann, _ := r["annotations"].(map[string]any)
			for _, key := range []string{"summary", "description"} {
				if s, _ := ann[key].(string); len(strings.TrimSpace(s)) < 20 {
					t.Errorf("alert %s: %s annotation missing or too short to help (%q)", name, key, s)
				}
			}
			labels, _ := r["labels"].(map[string]any)
			if sev, _ := labels["severity"].(string); !slices.Contains([]string{"critical", "warning", "info"}, sev) {
				t.Errorf("alert %s: severity %q, want critical, warning or info", name, sev)
			}
		}
	}
	if n < 7 {
		t.Fatalf("found %d alerts, want at least the 7 of issue 9", n)
	}
}

// alertNames lists the "alert:" names of a rules file.
func alertNames(rules []byte) []string {
	var names []string
	for _, m := range regexp.MustCompile(`(?m)^\s*-?\s*alert:\s*(\S+)`).FindAllSubmatch(rules, -1) {
		names = append(names, string(m[1]))
	}
	return names
}

// Every alert is exercised by the rule unit tests, so a new alert without a
// test, or a renamed one, fails here.
func TestDeployEveryAlertTested(t *testing.T) {
	alerts := alertNames(readDeployFile(t, "prometheus-alerts.yaml"))
	tests := string(readDeployFile(t, "prometheus-alerts-test.yaml"))
	if len(alerts) < 7 {
		t.Fatalf("found only %d alerts: %v", len(alerts), alerts)
	}
	for _, a := range alerts {
		if !regexp.MustCompile(`alertname:\s*` + regexp.QuoteMeta(a) + `\b`).MatchString(tests) {
			t.Errorf("alert %s has no case in prometheus-alerts-test.yaml", a)
		}
	}
}

// --- the Grafana dashboard --------------------------------------------------

type grafanaTarget struct {
	Expr  string `json:"expr"`
	RefID string `json:"refId"`
}

type grafanaPanel struct {
	ID      int                      `json:"id"`
	Type    string                   `json:"type"`
	Title   string                   `json:"title"`
	GridPos struct{ X, Y, W, H int } `json:"gridPos"`
	Targets []grafanaTarget          `json:"targets"`
	Panels  []grafanaPanel           `json:"panels"`
}

type grafanaDashboard struct {
	UID           string         `json:"uid"`
	Title         string         `json:"title"`
	SchemaVersion int            `json:"schemaVersion"`
	Panels        []grafanaPanel `json:"panels"`
	Templating    struct {
		List []struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

func loadDashboard(t *testing.T) grafanaDashboard {
	t.Helper()
	raw := readDeployFile(t, "grafana-dashboard.json")
	dec := json.NewDecoder(bytes.NewReader(raw))
	var d grafanaDashboard
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("grafana-dashboard.json: %v", err)
	}
	if dec.More() {
		t.Fatal("grafana-dashboard.json: data after the dashboard object")
	}
	return d
}

func TestDeployDashboardShape(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Errorf("uid %q, title %q: both are required", d.UID, d.Title)
	}
	if d.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d: want a current Grafana schema (36 or later)", d.SchemaVersion)
	}
	var dsVar bool
	for _, v := range d.Templating.List {
		if v.Type == "datasource" && string(v.Query) == `"prometheus"` {
			dsVar = true
		}
	}
	if !dsVar {
		t.Error("no Prometheus datasource variable: the dashboard would be tied to one data source")
	}
	ids := map[int]string{}
	type cell struct{ x, y int }
	taken := map[cell]string{}
	exprs := 0
	for _, p := range d.Panels {
		if prev, ok := ids[p.ID]; ok {
			t.Errorf("panel %q reuses id %d of %q", p.Title, p.ID, prev)
		}
		ids[p.ID] = p.Title
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v outside the 24-column grid", p.Title, g)
		}
		for x := g.X; x < g.X+g.W; x++ {
			for y := g.Y; y < g.Y+g.H; y++ {
				if other, ok := taken[cell{x, y}]; ok {
					t.Errorf("panel %q overlaps %q at column %d row %d", p.Title, other, x, y)
					x = g.X + g.W // one report per pair of panels: leave both loops
					break
				}
				taken[cell{x, y}] = p.Title
			}
		}
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q, query %s: empty expression", p.Title, tg.RefID)
			}
			exprs++
		}
	}
	// What the operator is promised (issue 9): each needs its panel.
	for _, metric := range []string{
		"gatehouse_xdp_packets_total", "gatehouse_nft_packets_total",
		"gatehouse_feed_last_success_timestamp_seconds", "gatehouse_feed_serial",
		"gatehouse_tls_handshakes_total", "gatehouse_proxy_connections_active",
		"gatehouse_proxy_bytes_total", "gatehouse_cert_expiry_timestamp_seconds",
		"gatehouse_config_reloads_total", "gatehouse_admitted_prefixes",
	} {
		if !slices.ContainsFunc(dashboardExprs(d), func(e string) bool { return strings.Contains(e, metric) }) {
			t.Errorf("no panel queries %s", metric)
		}
	}
	if exprs == 0 {
		t.Fatal("no queries at all")
	}
}

func dashboardExprs(d grafanaDashboard) []string {
	var out []string
	var walk func([]grafanaPanel)
	walk = func(ps []grafanaPanel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				out = append(out, tg.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

// grafanaVars stands in for Grafana's variables so that the queries can be
// checked as plain PromQL.
var grafanaVars = strings.NewReplacer(
	"$__rate_interval", "1m",
	"$__interval", "1m",
	"$__range", "1h",
	"$instance", ".*",
	"$tenant", ".*",
)

// TestDeployDashboardQueriesParse has promtool parse every panel query (as
// a recording rule), so a PromQL typo fails here rather than in Grafana.
func TestDeployDashboardQueriesParse(t *testing.T) {
	promtool := netns.RequireTool(t, "promtool", "prometheus")
	d := loadDashboard(t)
	type rule struct {
		Record string `json:"record"`
		Expr   string `json:"expr"`
	}
	var rules []rule
	for i, e := range dashboardExprs(d) {
		rules = append(rules, rule{Record: fmt.Sprintf("dashboard:query_%d", i), Expr: grafanaVars.Replace(e)})
	}
	// A rules file is YAML, and JSON is YAML.
	file := map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}}
	b, err := json.Marshal(file)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "dashboard-queries.yaml")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := runTool(t, nil, promtool, "check", "rules", path)
	if err != nil {
		t.Fatalf("a dashboard query does not parse: %v\n%s", err, out)
	}
}

// --- metric names -----------------------------------------------------------

var metricNameRE = regexp.MustCompile(`\bgatehouse_[a-z0-9_]*[a-z0-9]`)

// exportedMetricNames collects the metric names the module's non-test Go
// files declare (prometheus Opts Name: or NewDesc): the names the code can
// export. A name that is only read (daemon status) or printed does not
// count, so renaming an exporter fails the alert and dashboard checks.
func exportedMetricNames(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	lit := regexp.MustCompile(`(?:Name:\s*|NewDesc\()"(gatehouse_[a-z0-9_]+)"`)
	err := filepath.WalkDir("..", func(path string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if de.IsDir() {
			if n := de.Name(); n != ".." && (strings.HasPrefix(n, ".") || n == "testdata" || n == "test") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range lit.FindAllSubmatch(b, -1) {
			names[string(m[1])] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// knownMetric reports whether name, or the histogram family it belongs to,
// is one the code exports.
func knownMetric(known map[string]bool, name string) bool {
	if known[name] {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok && known[base] {
			return true
		}
	}
	return false
}

// TestDeployMetricNamesExist fails when the dashboard or an alert names a
// metric the code does not export, so renaming a metric breaks the build
// instead of a dashboard nobody looks at until the night it is needed.
func TestDeployMetricNamesExist(t *testing.T) {
	known := exportedMetricNames(t)
	if !known["gatehouse_config_reloads_total"] {
		t.Fatalf("the scan of the Go sources found no known metric (found %d names)", len(known))
	}
	for _, file := range []string{"prometheus-alerts.yaml", "grafana-dashboard.json", "prometheus-alerts-test.yaml"} {
		b := readDeployFile(t, file)
		used := map[string]bool{}
		for _, m := range metricNameRE.FindAll(b, -1) {
			used[string(m)] = true
		}
		if len(used) == 0 {
			t.Errorf("%s names no gatehouse metric", file)
		}
		for name := range used {
			if !knownMetric(known, name) {
				t.Errorf("%s uses %s, which no Go file of gatehouse exports", file, name)
			}
		}
	}
}

// --- the example configuration ----------------------------------------------

// TestDeployExampleConfigParses decodes deploy/gatehouse.yaml with the
// daemon's own parser and validator. The files it names (certificates, CAs,
// CRLs) do not exist on a build machine, so those problems, and only those,
// are expected.
func TestDeployExampleConfigParses(t *testing.T) {
	raw := readDeployFile(t, "gatehouse.yaml")
	noEnv := func(string) (string, bool) { return "", false }
	cfg, err := config.Parse(raw, "deploy/gatehouse.yaml", noEnv)
	if err == nil {
		// Every file happened to exist: then the whole example is valid.
		t.Logf("example configuration valid as is: %d listeners", len(cfg.Listeners))
		return
	}
	var problems config.Problems
	if !errors.As(err, &problems) {
		t.Fatalf("example configuration does not parse: %v", err)
	}
	fileKey := regexp.MustCompile(`\.(client_ca|intermediates|crl|server_cert|server_key|backend_ca|backend_cert|backend_key|ca)$`)
	for _, p := range problems {
		if !fileKey.MatchString(p.Path) || !strings.Contains(p.Msg, "cannot read") {
			t.Errorf("example configuration: %s", p)
		}
	}
	if len(problems) == 0 {
		t.Fatalf("parse failed without problems: %v", err)
	}
	t.Logf("%d problem(s), each a file absent on this machine", len(problems))
}

// parseExampleWithFiles parses deploy/gatehouse.yaml with every file check
// satisfied by pointing the paths at an existing file, so the decoded
// structure can be inspected.
func parseExampleWithFiles(t *testing.T) *config.Config {
	t.Helper()
	existing, err := filepath.Abs(filepath.Join(deployDir, "gatehouse.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	withFiles := regexp.MustCompile(`(?m)(\b(?:client_ca|intermediates|crl|server_cert|server_key|backend_ca|backend_cert|backend_key):\s*)/etc/gatehouse/\S+`).
		ReplaceAll(readDeployFile(t, "gatehouse.yaml"), []byte("${1}"+existing))
	cfg, err := config.Parse(withFiles, "deploy/gatehouse.yaml", func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatalf("example configuration with its files present: %v", err)
	}
	return cfg
}

// TestDeployExampleConfigContent checks what the parser cannot: the example
// uses documentation addresses only, its feed keys are real minisign public
// keys, and it exercises every protocol.
func TestDeployExampleConfigContent(t *testing.T) {
	raw := readDeployFile(t, "gatehouse.yaml")
	cfg := parseExampleWithFiles(t)
	// systemd kills what is still running at TimeoutStopSec; the drain must
	// end before that.
	m := regexp.MustCompile(`(?m)^TimeoutStopSec=(\S+)$`).FindStringSubmatch(string(readDeployFile(t, "gatehouse.service")))
	if m == nil {
		t.Fatal("gatehouse.service has no TimeoutStopSec=")
	}
	stop, err := time.ParseDuration(m[1])
	if err != nil {
		t.Fatalf("TimeoutStopSec=%s: %v", m[1], err)
	}
	if cfg.ShutdownGrace >= stop {
		t.Errorf("example shutdown_grace %v is not below the unit's TimeoutStopSec %v", cfg.ShutdownGrace, stop)
	}
	// With bgp on, the withdrawal's wait comes before the drain; even at
	// its maximum the two must end before systemd kills the daemon, or
	// say in the unit that it must be raised.
	if stop <= cfg.ShutdownGrace+cfg.BGP.Drain.WithdrawWait {
		t.Errorf("example shutdown_grace %v plus bgp.drain.withdraw_wait %v is not below TimeoutStopSec %v",
			cfg.ShutdownGrace, cfg.BGP.Drain.WithdrawWait, stop)
	}
	if !strings.Contains(string(readDeployFile(t, "gatehouse.service")), "withdraw_wait") {
		t.Error("gatehouse.service does not say that bgp.drain.withdraw_wait counts against TimeoutStopSec")
	}
	protocols := map[string]bool{}
	for _, l := range cfg.Listeners {
		protocols[l.Protocol] = true
	}
	for _, p := range []string{"https", "soap", "tn3270", "tn5250"} {
		if !protocols[p] {
			t.Errorf("example has no %s listener", p)
		}
	}
	if len(cfg.Feeds) == 0 {
		t.Fatal("example has no feed")
	}
	for _, f := range cfg.Feeds {
		for _, k := range f.MinisignKeys {
			var pk minisign.PublicKey
			if err := pk.UnmarshalText([]byte(k)); err != nil {
				t.Errorf("feed %s: key %q is not a minisign public key: %v", f.Name, k, err)
			}
		}
	}
	// Documentation ranges only (RFC 5737, RFC 3849); no real host names.
	doc := regexp.MustCompile(`^(192\.0\.2\.|198\.51\.100\.|203\.0\.113\.|2001:db8:)`)
	ipLike := regexp.MustCompile(`\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b|\b[0-9a-f]{1,4}:[0-9a-f]{0,4}:[0-9a-f:]*\b`)
	for i, line := range strings.Split(string(raw), "\n") {
		for _, ip := range ipLike.FindAllString(line, -1) {
			if !doc.MatchString(ip) && ip != "127.0.0.1" {
				t.Errorf("gatehouse.yaml:%d: %s is not a documentation address", i+1, ip)
			}
		}
		for _, host := range regexp.MustCompile(`\b[a-z0-9-]+(\.[a-z0-9-]+)*\.(com|org|net|io|de)\b`).FindAllString(line, -1) {
			if !strings.HasSuffix(host, "example.net") && !strings.HasSuffix(host, "example.com") && !strings.HasSuffix(host, "example.org") {
				t.Errorf("gatehouse.yaml:%d: %s is not an example domain", i+1, host)
			}
		}
	}
}

// --- the systemd unit -------------------------------------------------------

// unitForVerify writes a copy of the unit whose binary paths point at a
// freshly built gatehouse, since systemd-analyze verify insists that
// ExecStart= names an executable.
func unitForVerify(t *testing.T) string {
	t.Helper()
	unit := readDeployFile(t, "gatehouse.service")
	if !bytes.Contains(unit, []byte("/usr/local/bin/gatehouse ")) {
		t.Fatal("gatehouse.service no longer runs /usr/local/bin/gatehouse")
	}
	bin := binary(t)
	path := filepath.Join(t.TempDir(), "gatehouse.service")
	if err := os.WriteFile(path, bytes.ReplaceAll(unit, []byte("/usr/local/bin/gatehouse "), []byte(bin+" ")), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestDeploySystemdUnitVerify(t *testing.T) {
	analyze := netns.RequireTool(t, "systemd-analyze", "systemd")
	path := unitForVerify(t)
	out, err := runTool(t, nil, analyze, "verify", path)
	// verify exits 0 on unknown keys and bad values and only prints them;
	// any line about this unit is a failure. Lines about the system's own
	// units (it loads the dependencies) are not ours to judge.
	var ours []string
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "gatehouse") {
			ours = append(ours, line)
		}
	}
	if err != nil || len(ours) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, strings.Join(ours, "\n"))
	}
}

// The unit's sandbox must not regress: the exposure rating of
// "systemd-analyze security" (offline, so no running systemd is needed)
// stays at or below the figure recorded in the unit's comment.
func TestDeploySystemdUnitSecurity(t *testing.T) {
	analyze := netns.RequireTool(t, "systemd-analyze", "systemd")
	path := unitForVerify(t)
	unit := string(readDeployFile(t, "gatehouse.service"))
	m := regexp.MustCompile(`rates\s*\n?#?\s*this unit (\d+)\.(\d) `).FindStringSubmatch(unit)
	if m == nil {
		t.Fatal("gatehouse.service does not record its systemd-analyze security rating")
	}
	threshold := m[1] + m[2] // the command takes tenths: 2.1 is 21
	out, err := runTool(t, nil, analyze, "security", "--offline=true", "--threshold="+threshold, "--no-pager", path)
	if strings.Contains(out, "Unknown command verb") || strings.Contains(out, "unrecognized option") {
		t.Skipf("this systemd-analyze cannot rate units offline (needs systemd 250+):\n%s", out)
	}
	if err != nil {
		// The full table is long; what got worse is on the ✗ lines.
		var worse []string
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "✗") || strings.Contains(line, "Overall") || strings.Contains(line, "gatehouse.service:") {
				worse = append(worse, line)
			}
		}
		t.Fatalf("exposure above the recorded %s.%s (or the rating failed): %v\n%s", m[1], m[2], err, strings.Join(worse, "\n"))
	}
	// The hardening the daemon was designed with; a line removed from the
	// unit is noticed even if the overall figure stays.
	for _, want := range []string{
		"Type=notify", "WatchdogSec=", "NoNewPrivileges=yes", "ProtectSystem=strict",
		"CapabilityBoundingSet=CAP_NET_ADMIN CAP_BPF CAP_PERFMON CAP_NET_BIND_SERVICE CAP_SETUID CAP_SETGID CAP_SETPCAP\n",
		"ReadWritePaths=/sys/fs/bpf", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK\n",
		"MemoryDenyWriteExecute=yes", "SystemCallArchitectures=native",
	} {
		if !strings.Contains(unit, "\n"+want) {
			t.Errorf("gatehouse.service lacks %q", strings.TrimSpace(want))
		}
	}
	if regexp.MustCompile(`(?m)^(CapabilityBoundingSet|AmbientCapabilities)=.*CAP_SYS_ADMIN`).MatchString(unit) {
		t.Error("gatehouse.service grants CAP_SYS_ADMIN: systemd mounts bpffs, the daemon needs no mount")
	}
}

// --- a real Prometheus server -------------------------------------------------

// promServer is a Prometheus server the test started, scraping one target
// every second.
type promServer struct {
	addr   string
	client *http.Client // reaches addr (inside the namespace, if any)
	cmd    *exec.Cmd
	out    *testkit.LogBuffer
	done   chan struct{}
}

// startPromServer runs prometheus against target (host:port serving
// /metrics) in job "gatehouse", with the given rule files, and waits until
// it is ready. It is stopped, by its PID, when the test ends.
func startPromServer(t *testing.T, target string, ruleFiles ...string) *promServer {
	t.Helper()
	return startPromServerIn(t, nil, target, ruleFiles...)
}

// startPromServerIn is startPromServer inside network namespace ns (nil: the
// test's own), so that it can scrape a daemon that listens there.
func startPromServerIn(t *testing.T, ns *netns.NS, target string, ruleFiles ...string) *promServer {
	t.Helper()
	bin := netns.RequireTool(t, "prometheus", "prometheus")
	dir := t.TempDir()
	var rules strings.Builder
	for _, f := range ruleFiles {
		abs, err := filepath.Abs(f)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&rules, "  - %q\n", abs)
	}
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
%s
scrape_configs:
  - job_name: gatehouse
    static_configs:
      - targets: [%q]
`, rules.String(), target)
	if len(ruleFiles) == 0 {
		cfg = strings.Replace(cfg, "rule_files:\n\n", "", 1)
	}
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &promServer{addr: testkit.FreeLoopbackAddr(t), client: &http.Client{Timeout: 5 * time.Second}, out: &testkit.LogBuffer{}, done: make(chan struct{})}
	args := []string{
		"--config.file=" + cfgPath,
		"--storage.tsdb.path=" + filepath.Join(dir, "data"),
		"--web.listen-address=" + p.addr,
		"--log.level=warn",
	}
	p.cmd = exec.Command(bin, args...)
	if ns != nil {
		p.cmd = ns.Command(bin, args...)
		p.client.Transport = &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return ns.DialContext(ctx, network, "", addr)
		}}
	}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(p.stop)
	p.waitFor(t, "prometheus to be ready", func() (bool, error) {
		resp, err := p.client.Get("http://" + p.addr + "/-/ready")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	return p
}

// stop ends the server: SIGTERM, then SIGKILL after 5 seconds.
func (p *promServer) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// waitFor polls ok for up to 20 seconds.
func (p *promServer) waitFor(t *testing.T, what string, ok func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			t.Fatalf("prometheus exited while waiting for %s:\n%s", what, p.out.String())
		default:
		}
		done, err := ok()
		if done {
			return
		}
		lastErr = err
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s (last error: %v); prometheus output:\n%s", what, lastErr, p.out.String())
}

// promSample is one element of an instant vector.
type promSample struct {
	Metric map[string]string
	Value  float64
}

// api GETs /api/v1/<path> and decodes the data of a successful answer.
func (p *promServer) api(path string, params url.Values, data any) error {
	resp, err := p.client.Get("http://" + p.addr + "/api/v1/" + path + "?" + params.Encode())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return err
	}
	var env struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		return fmt.Errorf("%s: %w: %s", path, err, body)
	}
	if env.Status != "success" {
		return fmt.Errorf("%s: %s: %s", path, env.Status, env.Error)
	}
	return json.Unmarshal(env.Data, data)
}

// query runs an instant PromQL query.
func (p *promServer) query(expr string) ([]promSample, error) {
	var data struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		} `json:"result"`
	}
	if err := p.api("query", url.Values{"query": {expr}}, &data); err != nil {
		return nil, err
	}
	if data.ResultType != "vector" {
		return nil, fmt.Errorf("query %s: result type %s, want vector", expr, data.ResultType)
	}
	var out []promSample
	for _, r := range data.Result {
		s, _ := r.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("query %s: value %v: %w", expr, r.Value[1], err)
		}
		out = append(out, promSample{Metric: r.Metric, Value: v})
	}
	return out, nil
}

// waitValue waits until expr returns exactly one sample and returns it.
func (p *promServer) waitValue(t *testing.T, expr string) promSample {
	t.Helper()
	var got promSample
	p.waitFor(t, "a sample of "+expr, func() (bool, error) {
		s, err := p.query(expr)
		if err != nil || len(s) != 1 {
			return false, fmt.Errorf("%d samples, %v", len(s), err)
		}
		got = s[0]
		return true, nil
	})
	return got
}

// gatehouseLikeRegistry is an exposition shaped like the daemon's: its own
// registry (never the global one), counters with bounded labels, gauges, a
// histogram, and the Go and process collectors.
func gatehouseLikeRegistry(t *testing.T) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewRegistry()
	xdp := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gatehouse_xdp_packets_total",
		Help: "Packets the XDP filter judged, by action and reason.",
	}, []string{"action", "reason"})
	xdp.WithLabelValues("drop", "not_admitted").Add(1234)
	xdp.WithLabelValues("pass", "admitted").Add(98765)
	reloads := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gatehouse_config_reloads_total",
		Help: "Configuration reloads by result (ok, error).",
	}, []string{"result"})
	reloads.WithLabelValues("ok").Add(3)
	reloads.WithLabelValues("error")
	admitted := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "gatehouse_admitted_prefixes",
		Help: "Prefixes each feed contributes to the admitted set in force.",
	}, []string{"family", "feed"})
	admitted.WithLabelValues("ipv4", "all").Set(3)
	apply := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "gatehouse_policy_apply_seconds",
		Help:    "Time to apply one policy generation, per layer.",
		Buckets: []float64{.001, .01, .1, 1},
	}, []string{"layer"})
	apply.WithLabelValues("nftables").Observe(0.004)
	reg.MustRegister(xdp, reloads, admitted, apply,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// promtoolCheckMetrics lints an exposition the way CI does.
func promtoolCheckMetrics(t *testing.T, exposition []byte) {
	t.Helper()
	promtool := netns.RequireTool(t, "promtool", "prometheus")
	out, err := runTool(t, exposition, promtool, "check", "metrics")
	if err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}

func scrapeText(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return b
}

// TestDeployPrometheusScrape: a real Prometheus server scrapes a
// gatehouse-like endpoint every second with the shipped alert rules loaded;
// a PromQL query returns the XDP drop counter, the rules evaluate without
// error, and the XDP alert is pending for a target that exports no attach
// mode.
func TestDeployPrometheusScrape(t *testing.T) {
	netns.RequireTool(t, "prometheus", "prometheus")
	srv := httptest.NewServer(promhttp.HandlerFor(gatehouseLikeRegistry(t), promhttp.HandlerOpts{}))
	t.Cleanup(srv.Close)

	promtoolCheckMetrics(t, scrapeText(t, srv.URL+"/metrics"))

	p := startPromServer(t, strings.TrimPrefix(srv.URL, "http://"), filepath.Join(deployDir, "prometheus-alerts.yaml"))
	got := p.waitValue(t, `gatehouse_xdp_packets_total{action="drop",reason="not_admitted"}`)
	if got.Value != 1234 {
		t.Errorf("drop counter = %v, want 1234", got.Value)
	}
	if got.Metric["job"] != "gatehouse" || got.Metric["instance"] != strings.TrimPrefix(srv.URL, "http://") {
		t.Errorf("sample labels %v: want job gatehouse and the test server as instance", got.Metric)
	}
	if v := p.waitValue(t, `sum(gatehouse_xdp_packets_total)`).Value; v != 1234+98765 {
		t.Errorf("sum of XDP counters = %v, want %v", v, 1234+98765)
	}

	// The rules are loaded and evaluated against the live series.
	p.waitFor(t, "GatehouseXDPNotAttached to be pending", func() (bool, error) {
		var data struct {
			Groups []struct {
				Rules []struct {
					Name      string `json:"name"`
					Health    string `json:"health"`
					LastError string `json:"lastError"`
					State     string `json:"state"`
				} `json:"rules"`
			} `json:"groups"`
		}
		if err := p.api("rules", url.Values{"type": {"alert"}}, &data); err != nil {
			return false, err
		}
		n, pending := 0, false
		for _, g := range data.Groups {
			for _, r := range g.Rules {
				n++
				if r.Health == "err" {
					t.Fatalf("rule %s fails on live data: %s", r.Name, r.LastError)
				}
				if r.Health != "ok" {
					return false, fmt.Errorf("rule %s health %q", r.Name, r.Health)
				}
				if r.Name == "GatehouseDown" && r.State != "inactive" {
					t.Fatalf("GatehouseDown is %s while the target is up", r.State)
				}
				if r.Name == "GatehouseXDPNotAttached" {
					pending = r.State == "pending"
				}
			}
		}
		if n == 0 {
			return false, errors.New("no rules loaded")
		}
		return pending, fmt.Errorf("%d rules, XDP alert pending: %v", n, pending)
	})
}

// TestDeployPrometheusScrapesDaemon points the same server at the real
// daemon (XDP and nftables off, so no privileges are needed): its
// exposition passes promtool, and PromQL sees its reload counter.
func TestDeployPrometheusScrapesDaemon(t *testing.T) {
	netns.RequireTool(t, "prometheus", "prometheus")
	netns.RequireTool(t, "promtool", "prometheus")
	d, _, _, _ := startDaemon(t)
	promtoolCheckMetrics(t, scrapeText(t, "http://"+d.metrics+"/metrics"))
	p := startPromServer(t, d.metrics)
	got := p.waitValue(t, `gatehouse_config_reloads_total{result="ok"}`)
	if got.Value != 0 {
		t.Errorf("reloads ok = %v before any reload, want 0", got.Value)
	}
	if up := p.waitValue(t, `up{job="gatehouse"}`); up.Value != 1 {
		t.Errorf("up = %v, want 1", up.Value)
	}
}

// Scanning for metric names must see the names as the alert file writes
// them; a guard against the regular expression silently matching nothing.
func TestDeployMetricNameScan(t *testing.T) {
	line := `expr: rate(gatehouse_xdp_packets_total{x="y"}[5m]) and GatehouseDown on job="gatehouse"`
	got := metricNameRE.FindAllString(line, -1)
	if !slices.Equal(got, []string{"gatehouse_xdp_packets_total"}) {
		t.Fatalf("metric scan found %v", got)
	}
}

// --- the unit's privileges, for real ------------------------------------------

// unitCapabilities returns the capability names of the unit's
// CapabilityBoundingSet= and checks that AmbientCapabilities= grants the
// same.
func unitCapabilities(t *testing.T, unit string) []string {
	t.Helper()
	get := func(key string) []string {
		m := regexp.MustCompile(`(?m)^` + key + `=(.*)$`).FindStringSubmatch(unit)
		if m == nil {
			t.Fatalf("gatehouse.service has no %s=", key)
		}
		return strings.Fields(m[1])
	}
	bounding, ambient := get("CapabilityBoundingSet"), get("AmbientCapabilities")
	if !slices.Equal(bounding, ambient) {
		t.Fatalf("CapabilityBoundingSet %v and AmbientCapabilities %v differ", bounding, ambient)
	}
	return bounding
}

// capabilityBits maps the capabilities the unit may name to their numbers
// (linux/capability.h).
var capabilityBits = map[string]uint{
	"CAP_SETGID":           6,
	"CAP_SETUID":           7,
	"CAP_SETPCAP":          8,
	"CAP_NET_BIND_SERVICE": 10,
	"CAP_NET_ADMIN":        12,
	"CAP_SYS_ADMIN":        21,
	"CAP_PERFMON":          38,
	"CAP_BPF":              39,
}

// procCaps reads one capability set (CapEff, CapBnd …) of a process.
func procCaps(t *testing.T, pid int, set string) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^` + set + `:\s*([0-9a-f]+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("/proc/%d/status has no %s", pid, set)
	}
	v, err := strconv.ParseUint(string(m[1]), 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestDeployUnitCapabilitiesSuffice runs the daemon with exactly the
// privileges the unit gives it: uid 0 without root's implicit capabilities
// (SecureBits=noroot-locked), no_new_privs, and only the unit's ambient and
// bounding capabilities (applied with setpriv, as systemd is not PID 1 in a
// test). From a torn-down state it must load and attach XDP, build its
// nftables table, pin into bpffs (which the test mounted, as systemd does),
// and carry an admitted tenant's request while dropping the intruder. This
// is what proves CAP_SYS_ADMIN unnecessary. The unit's file-system and
// system-call sandbox is not reproduced here; systemd-analyze checks it.
func TestDeployUnitCapabilitiesSuffice(t *testing.T) {
	netns.RequirePriv(t)
	setpriv := netns.RequireTool(t, "setpriv", "util-linux")
	unit := string(readDeployFile(t, "gatehouse.service"))
	caps := unitCapabilities(t, unit)
	var want uint64
	var names []string
	for _, c := range caps {
		bit, ok := capabilityBits[c]
		if !ok {
			t.Fatalf("gatehouse.service names %s, unknown to this test", c)
		}
		want |= 1 << bit
		names = append(names, "+"+strings.ToLower(strings.TrimPrefix(c, "CAP_")))
	}
	if !strings.Contains(unit, "\nNoNewPrivileges=yes") || !strings.Contains(unit, "\nSecureBits=noroot-locked") {
		t.Fatal("the unit no longer sets NoNewPrivileges=yes and SecureBits=noroot-locked as this test assumes")
	}

	tp := newTopology(t)
	// Start from nothing: stop the root daemon and remove its kernel state,
	// so the restricted one has to create everything, not adopt it.
	if err := tp.d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-tp.d.exited
	if out, err := tp.dmz.Command(binary(t), "teardown", "--yes", "--pin-dir", tp.pinDir, "-c", tp.config).CombinedOutput(); err != nil {
		t.Fatalf("teardown: %v\n%s", err, out)
	}
	if link := tp.dmz.Exec(t, "ip", "link", "show", tp.outside.B); strings.Contains(link, "xdp") {
		t.Fatalf("XDP still attached after teardown:\n%s", link)
	}

	set := "-all," + strings.Join(names, ",")
	cmd := tp.dmz.Command(setpriv,
		"--no-new-privs",
		"--securebits=+noroot,+noroot_locked",
		"--bounding-set="+set, "--inh-caps="+set, "--ambient-caps="+set,
		"--", binary(t), "run", "-c", tp.config)
	tp.d = launch(t, cmd, "127.0.0.1:9477", tp.metricsClient)

	pid := tp.d.cmd.Process.Pid
	for _, s := range []string{"CapEff", "CapPrm", "CapBnd"} {
		if got := procCaps(t, pid, s); got != want {
			t.Fatalf("daemon %s = %#x, want exactly the unit's %#x (%v)", s, got, want, caps)
		}
	}

	if link := tp.dmz.Exec(t, "ip", "link", "show", tp.outside.B); !strings.Contains(link, "xdp") {
		t.Errorf("restricted daemon attached no XDP program:\n%s", link)
	}
	tp.dmz.Exec(t, "nft", "list", "table", "inet", "gatehouse")
	if entries, _ := os.ReadDir(tp.pinDir); len(entries) == 0 {
		t.Errorf("restricted daemon pinned nothing under %s", tp.pinDir)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := tp.get(ctx, cloudAddr, gateV4, tp.client); err != nil {
		t.Errorf("admitted tenant through the restricted daemon: %v\n%s", err, tp.d.out.String())
	}
	if got := tp.probe(t, intruderAddr, gateV4Alt); got != "dropped" {
		t.Errorf("intruder with the restricted daemon: %s, want dropped", got)
	}
	// The tenant's request went through a worker (enforcement.privsep is
	// the default): the unit's capabilities let the enforcer start them.
	if !strings.Contains(tp.d.out.String(), `msg="worker started"`) {
		t.Errorf("the restricted daemon started no proxy worker:\n%s", tp.d.out.String())
	}
}

// syscallFilterSet expands a list of SystemCallFilter= items (system calls
// and @groups, nested) with systemd-analyze.
func syscallFilterSet(t *testing.T, analyze string, items []string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	seen := map[string]bool{}
	var expand func(string)
	expand = func(item string) {
		if !strings.HasPrefix(item, "@") {
			out[item] = true
			return
		}
		if seen[item] {
			return
		}
		seen[item] = true
		text, err := runTool(t, nil, analyze, "syscall-filter", "--no-pager", item)
		if err != nil {
			t.Fatalf("systemd-analyze syscall-filter %s: %v\n%s", item, err, text)
		}
		for _, line := range strings.Split(text, "\n")[1:] {
			f := strings.TrimSpace(line)
			if f == "" || strings.HasPrefix(f, "#") {
				continue
			}
			expand(f)
		}
	}
	for _, item := range items {
		expand(item)
	}
	return out
}

// unitAllowedSyscalls applies the unit's SystemCallFilter= lines in order,
// as systemd merges them: the first (an allow list) sets, a later "~" line
// removes, a later plain line adds.
func unitAllowedSyscalls(t *testing.T, analyze, unit string) map[string]bool {
	t.Helper()
	lines := regexp.MustCompile(`(?m)^SystemCallFilter=(.*)$`).FindAllStringSubmatch(unit, -1)
	if len(lines) == 0 || strings.HasPrefix(lines[0][1], "~") {
		t.Fatal("gatehouse.service: want SystemCallFilter= to start with an allow list")
	}
	allowed := map[string]bool{}
	for _, l := range lines {
		items, deny := l[1], false
		if rest, ok := strings.CutPrefix(items, "~"); ok {
			items, deny = rest, true
		}
		for name := range syscallFilterSet(t, analyze, strings.Fields(items)) {
			if deny {
				delete(allowed, name)
			} else {
				allowed[name] = true
			}
		}
	}
	if len(allowed) < 100 || !allowed["read"] {
		t.Fatalf("filter expansion looks wrong: %d system calls, read allowed: %v", len(allowed), allowed["read"])
	}
	return allowed
}

// TestDeployUnitSyscallFilter traces the daemon through a start from a
// torn-down state (load, pin, attach, nftables), an admitted request, an
// intruder's probe, a status query, a reload and a clean stop, and checks
// that every system call it made is one the unit's SystemCallFilter= lets
// through. (Paths not taken here, feed fetches among them, are not covered;
// the filter answers EPERM rather than killing, so a miss shows as an error
// in the journal.)
func TestDeployUnitSyscallFilter(t *testing.T) {
	netns.RequirePriv(t)
	analyze := netns.RequireTool(t, "systemd-analyze", "systemd")
	strace := netns.RequireTool(t, "strace", "strace")
	allowed := unitAllowedSyscalls(t, analyze, string(readDeployFile(t, "gatehouse.service")))

	tp := newTopology(t)
	if err := tp.d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-tp.d.exited
	if out, err := tp.dmz.Command(binary(t), "teardown", "--yes", "--pin-dir", tp.pinDir, "-c", tp.config).CombinedOutput(); err != nil {
		t.Fatalf("teardown: %v\n%s", err, out)
	}
	trace := filepath.Join(t.TempDir(), "strace.out")
	tp.d = launch(t, tp.dmz.Command(strace, "-f", "-qq", "-o", trace, binary(t), "run", "-c", tp.config), "127.0.0.1:9477", tp.metricsClient)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := tp.get(ctx, cloudAddr, gateV4, tp.client); err != nil {
		t.Errorf("admitted tenant under strace: %v", err)
	}
	if got := tp.probe(t, intruderAddr, gateV4Alt); got != "dropped" {
		t.Errorf("intruder under strace: %s, want dropped", got)
	}

	// The admin socket answers (status is the client side of it).
	if out, err := exec.Command(binary(t), "status", "-c", tp.config).CombinedOutput(); err != nil {
		t.Errorf("status under strace: %v\n%s", err, out)
	}

	// The daemon is strace's child; signal it, not strace.
	children, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%[1]d/children", tp.d.cmd.Process.Pid))
	fields := strings.Fields(string(children))
	if err != nil || len(fields) != 1 {
		t.Fatalf("children of strace: %q %v", children, err)
	}
	daemon, err := strconv.Atoi(fields[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(daemon, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	tp.d.waitFor(t, "the reload", func() bool {
		return tp.metric(t, `gatehouse_config_reloads_total\{result="ok"\}`) >= 1
	})
	if err := syscall.Kill(daemon, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-tp.d.exited:
	case <-time.After(15 * time.Second):
		t.Fatalf("daemon did not stop on SIGTERM:\n%s", tp.d.out.String())
	}

	raw, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	// Only what follows the daemon's own execve counts (strace's start-up
	// of the child precedes it).
	_, after, ok := strings.Cut(string(raw), binary(t)+"\"")
	if !ok {
		t.Fatal("no execve of the daemon in the trace")
	}
	call := regexp.MustCompile(`(?m)^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)[( ]`)
	used := map[string]int{}
	for _, m := range call.FindAllStringSubmatch(after, -1) {
		used[m[1]]++
	}
	if used["bpf"] == 0 || used["sendmsg"]+used["sendto"] == 0 {
		t.Fatalf("trace looks incomplete (bpf %d, sendmsg/sendto %d calls)", used["bpf"], used["sendmsg"]+used["sendto"])
	}
	var denied []string
	for name := range used {
		if !allowed[name] {
			denied = append(denied, name)
		}
	}
	slices.Sort(denied)
	if len(denied) > 0 {
		t.Fatalf("the daemon made system calls the unit's SystemCallFilter= refuses (EPERM): %v", denied)
	}
	t.Logf("%d distinct system calls, all allowed", len(used))
}
