package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// fixture writes the files a good configuration refers to and returns the
// directory, for use as ${DIR} in the YAML.
func fixture(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"acme-ca.pem", "globex-ca.pem", "server.pem", "server.key", "internal-ca.pem"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("placeholder\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

const goodYAML = `
interface: veth-dmz
state_dir: /var/lib/gatehouse
enforcement:
  mode: strict
  management: [{cidr: 198.51.100.0/28, ports: [22]}]
  new_conn_rate: {per_source: 3000/m, burst: 10}
static_ranges: [203.0.113.0/24, "2001:db8::/48"]
tenants:
  - id: acme
    client_ca: ${DIR}/acme-ca.pem
    identities: {uri_san: ["spiffe://acme/*"], fingerprints_sha256: ["AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99"]}
  - id: globex
    client_ca: ${DIR}/globex-ca.pem
    intermediates: ${DIR}/internal-ca.pem
listeners:
  - name: web
    listen: ":443"
    protocol: https
    server_cert: ${DIR}/server.pem
    server_key: ${DIR}/server.key
    routes:
      - {tenant: acme, host: acme.portal.example, path: /, backend: "https://192.0.2.5:8443", backend_ca: ${DIR}/internal-ca.pem}
      - {tenant: globex, backend: "http://192.0.2.6"}
  - name: mainframe
    listen: "192.0.2.1:992"
    protocol: tn3270
    server_cert: ${DIR}/server.pem
    server_key: ${DIR}/server.key
    routes:
      - {tenant: acme, backend: "192.0.2.7:23", lu_names: ["ACMELU0*"], terminal_types: ["IBM-3278-2-E"]}
`

func parse(t *testing.T, yaml string, env map[string]string) (*Config, error) {
	t.Helper()
	return parseIn(fixture(t), yaml, env)
}

// parseIn is parse with the fixture directory given.
func parseIn(dir, yaml string, env map[string]string) (*Config, error) {
	yaml = strings.ReplaceAll(yaml, "${DIR}", dir)
	return Parse([]byte(yaml), "test.yaml", func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	})
}

func TestGoodConfig(t *testing.T) {
	cfg, err := parse(t, goodYAML, nil)
	if err != nil {
		t.Fatalf("good config refused: %v", err)
	}
	p := cfg.Policy()
	if p.Enforcement.Mode != policy.ModeStrict || p.Enforcement.XDP != policy.XDPAuto || !p.Enforcement.NFTables {
		t.Errorf("enforcement = %+v", p.Enforcement)
	}
	if got := p.Enforcement.NewConnRate; got.PerSecond != 50 || got.Burst != 10 {
		t.Errorf("rate = %+v, want 50/s burst 10", got)
	}
	if got := p.Enforcement.ScanBlock; got.DistinctPorts != 10 || got.Window != 10*time.Second || got.BlockFor != 10*time.Minute {
		t.Errorf("scan block defaults = %+v", got)
	}
	if got := p.Enforcement.SourcePrefix; got != (policy.SourcePrefix{V4: 32, V6: 64}) {
		t.Errorf("source prefix defaults = %+v, want v4 32, v6 64", got)
	}
	if got := p.Enforcement.MaxConnsPerSource; got != 1000 {
		t.Errorf("max_conns_per_source default = %d, want 1000", got)
	}
	if len(p.Listeners) != 2 || p.Listeners[0].Port != 443 || p.Listeners[0].Addr.IsValid() || p.Listeners[1].Addr.String() != "192.0.2.1" {
		t.Errorf("listeners = %+v", p.Listeners)
	}
	if p.Listeners[0].Routes[1].Path != "/" {
		t.Errorf("https route without path should default to /, got %q", p.Listeners[0].Routes[1].Path)
	}
	if inter := p.Tenants[1].Intermediates; inter == "" || !strings.HasSuffix(inter, "/internal-ca.pem") {
		t.Errorf("intermediates not compiled: %q", inter)
	}
	if fp := p.Tenants[0].Identities.FingerprintSHA256[0]; fp != "aabbccddeeff00112233445566778899aabbccddeeff00112233445566778899" {
		t.Errorf("fingerprint not normalised: %q", fp)
	}
	if got := cfg.StaticPrefixes(); len(got) != 2 || got[1].String() != "2001:db8::/48" {
		t.Errorf("static = %v", got)
	}
	several, err := parse(t, strings.Replace(goodYAML, `backend: "http://192.0.2.6"`, `backends: ["http://192.0.2.6", "http://192.0.2.9"], health_path: /ping`, 1), nil)
	if err != nil {
		t.Fatal(err)
	}
	if r := several.Policy().Listeners[0].Routes[1]; r.Backend != "http://192.0.2.6" || len(r.Backends) != 2 || r.HealthInterval != 10*time.Second {
		t.Errorf("route with backends = %+v", r)
	}
	if got := p.TLS; got != (policy.TLS{CRLStale: policy.CRLStaleFail, TicketRotation: 6 * time.Hour}) {
		t.Errorf("tls defaults compiled to %+v, want fail, tickets on, 6h", got)
	}
	if cfg.Metrics.Listen != "127.0.0.1:9477" || cfg.ShutdownGrace != 15*time.Second {
		t.Errorf("defaults not applied: %q %s", cfg.Metrics.Listen, cfg.ShutdownGrace)
	}
}

func TestEnvOverride(t *testing.T) {
	cfg, err := parse(t, goodYAML, map[string]string{
		"GATEHOUSE_METRICS_LISTEN":                "127.0.0.1:9600",
		"GATEHOUSE_ENFORCEMENT_SCAN_BLOCK_WINDOW": "30s",
		"GATEHOUSE_STATIC_RANGES":                 "198.51.100.0/24,192.0.2.0/24",
		"GATEHOUSE_TLS_CRL_STALE":                 "warn",
	})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Metrics.Listen != "127.0.0.1:9600" || cfg.Enforcement.ScanBlock.Window != 30*time.Second {
		t.Errorf("env not applied: %q %s", cfg.Metrics.Listen, cfg.Enforcement.ScanBlock.Window)
	}
	if got := cfg.Policy().TLS; got.CRLStale != policy.CRLStaleWarn {
		t.Errorf("tls from env compiled to %+v", got)
	}
	if len(cfg.StaticRanges) != 2 || cfg.StaticRanges[0] != "198.51.100.0/24" {
		t.Errorf("static_ranges from env = %v", cfg.StaticRanges)
	}
	if _, err := parse(t, goodYAML, map[string]string{"GATEHOUSE_ENFORCEMENT_SCAN_BLOCK_WINDOW": "soon"}); err == nil ||
		!strings.Contains(err.Error(), `enforcement.scan_block.window: GATEHOUSE_ENFORCEMENT_SCAN_BLOCK_WINDOW="soon": not a duration`) {
		t.Errorf("bad env duration: %v", err)
	}
}

// TestProblems covers every error class: each case edits the good file and
// names the problem line it must produce.
func TestProblems(t *testing.T) {
	cases := []struct {
		name, from, to string
		want           []string
	}{
		{"unknown top key", "state_dir:", "colour: blue\nstate_dir:", []string{"colour: unknown key"}},
		{"unknown nested key", "mode: strict", "mode: strict\n  turbo: true", []string{"enforcement.turbo: unknown key"}},
		{"unknown route key", "lu_names:", "lu_nmes: [X], lu_names:", []string{"listeners[1].routes[0].lu_nmes: unknown key"}},
		{"bad duration", "mode: strict", "mode: strict\n  scan_block: {window: tenminutes}", []string{"enforcement.scan_block.window: not a duration"}},
		{"bad enum", "mode: strict", "mode: paranoid", []string{`enforcement.mode: "paranoid" is not one of listeners, strict`}},
		{"bad cidr", "203.0.113.0/24,", "203.0.113.0/33,", []string{`static_ranges[0]: "203.0.113.0/33" is not a CIDR prefix`}},
		{"host bits", "203.0.113.0/24,", "203.0.113.7/24,", []string{`static_ranges[0]: "203.0.113.7/24" has host bits set (did you mean 203.0.113.0/24?)`}},
		{"bad management", "198.51.100.0/28, ports: [22]", "198.51.100.0/28, ports: []", []string{"enforcement.management[0].ports: at least one port"}},
		{"bad listen", `listen: ":443"`, `listen: "443"`, []string{`listeners[0].listen: "443" is not [address]:port`}},
		{"listen by name", `listen: ":443"`, `listen: "gate.example:443"`, []string{"listeners[0].listen: \"gate.example:443\": listen on an IP address"}},
		{"bad backend host:port", `backend: "192.0.2.7:23"`, `backend: "192.0.2.7"`, []string{`listeners[1].routes[0].backend: "192.0.2.7" is not host:port`}},
		{"bad backend url", `backend: "http://192.0.2.6"`, `backend: "ftp://192.0.2.6"`, []string{"listeners[0].routes[1].backend: must be an http:// or https:// URL"}},
		{"unreadable file", "${DIR}/globex-ca.pem", "${DIR}/missing.pem", []string{"tenants[1].client_ca: cannot read", "no such file or directory"}},
		{"unreadable intermediates", "intermediates: ${DIR}/internal-ca.pem", "intermediates: ${DIR}/nope.pem", []string{"tenants[1].intermediates: cannot read"}},
		{"bad crl_stale", "static_ranges:", "tls: {crl_stale: ignore}\nstatic_ranges:", []string{`tls.crl_stale: "ignore" is not one of fail, warn`}},
		{"ticket rotation too short", "static_ranges:", "tls: {ticket_rotation: 10s}\nstatic_ranges:", []string{"tls.ticket_rotation: must be between 1m and 24h0m0s, got 10s"}},
		{"ticket rotation too long", "static_ranges:", "tls: {ticket_rotation: 48h}\nstatic_ranges:", []string{"tls.ticket_rotation: must be between 1m and 24h0m0s, got 48h0m0s"}},
		{"ticket keys relative", "static_ranges:", "tls: {ticket_keys: ticket.keys}\nstatic_ranges:", []string{`tls.ticket_keys: must be an absolute path, got "ticket.keys"`}},
		{"unknown tls key", "static_ranges:", "tls: {crl_stale: warn, tickets: false}\nstatic_ranges:", []string{"tls.tickets: unknown key"}},
		{"duplicate tenant", "id: globex", "id: acme", []string{`tenants[1].id: duplicate tenant "acme" (also at tenants[0].id)`}},
		{"duplicate listener", "name: mainframe", "name: web", []string{`listeners[1].name: duplicate listener "web"`}},
		{"unknown tenant", "{tenant: globex,", "{tenant: acme2,", []string{`listeners[0].routes[1].tenant: unknown tenant "acme2"`}},
		{"two listeners one port", `"192.0.2.1:992"`, `"192.0.2.1:443"`, []string{"listeners[1].listen: port 443 is already used by listeners[0]"}},
		{"no routes", "routes:\n      - {tenant: acme, backend: \"192.0.2.7:23\", lu_names: [\"ACMELU0*\"], terminal_types: [\"IBM-3278-2-E\"]}", "routes: []", []string{"listeners[1].routes: a listener needs at least one route"}},
		{"overlapping routes", "{tenant: globex, backend: \"http://192.0.2.6\"}", "{tenant: acme, host: ACME.portal.example, backend: \"http://192.0.2.6\"}", []string{"listeners[0].routes[1]: overlaps route 0: same tenant, host and path"}},
		{"backends on telnet", `backend: "192.0.2.7:23"`, `backends: ["192.0.2.7:23", "192.0.2.8:23"]`, []string{"listeners[1].routes[0].backends: does not apply to a tn3270 listener"}},
		{"option of another protocol", "lu_names:", "soap_actions: [x], lu_names:", []string{"listeners[1].routes[0].soap_actions: does not apply to a tn3270 listener"}},
		{"bad fingerprint", `fingerprints_sha256: ["AA:BB`, `fingerprints_sha256: ["ZZ:BB`, []string{"tenants[0].identities.fingerprints_sha256[0]: "}},
		{"empty identity", `uri_san: ["spiffe://acme/*"]`, `uri_san: ["spiffe://acme/*"], cn: [""]`, []string{"tenants[0].identities.cn[0]: empty: it would match every certificate without a cn"}},
		{"bad rate", "per_source: 3000/m", "per_source: lots", []string{`enforcement.new_conn_rate.per_source: "lots" is not a rate`}},
		{"interface required", "interface: veth-dmz", "interface: \"\"", []string{"interface: required when enforcement.xdp is not off"}},
		{"strict forward without interface", "interface: veth-dmz\nstate_dir: /var/lib/gatehouse\nenforcement:\n  mode: strict", "interface: \"\"\nstate_dir: /var/lib/gatehouse\nenforcement:\n  mode: strict\n  xdp: \"off\"\n  forward: true", []string{"enforcement.forward: in strict mode the forward chain needs interface"}},
		{"wrong type", "burst: 10", "burst: many", []string{"enforcement.new_conn_rate.burst"}},
		{"not yaml", "tenants:", "tenants: [", []string{"invalid configuration"}},
		{"backend and backends", `backend: "http://192.0.2.6"`, `backend: "http://192.0.2.6", backends: ["http://192.0.2.7"]`, []string{"listeners[0].routes[1].backends: give either backend or backends, not both"}},
		{"no backend", `backend: "http://192.0.2.6"`, `host: x.example`, []string{"listeners[0].routes[1].backend: required (or backends)"}},
		{"bad backends entry", `backend: "http://192.0.2.6"`, `backends: ["http://192.0.2.6", "gopher://192.0.2.7"]`, []string{`listeners[0].routes[1].backends[1]: must be an http:// or https:// URL, got "gopher://192.0.2.7"`}},
		{"health path on telnet", `backend: "192.0.2.7:23"`, `backend: "192.0.2.7:23", health_path: /ping`, []string{"listeners[1].routes[0].health_path: an https or soap route's URL path"}},
		{"file source with a host", "static_ranges:", "feeds: [{name: aws, source: \"file://etc/aws/manifest.json\", format: aws, minisign_keys: [k], threshold: 1, refresh: 15m}]\nstatic_ranges:", []string{`feeds[0].source: must be an https:// URL or a file:/// path of a manifest, got "file://etc/aws/manifest.json"`}},
		{"route path with a dot segment", `backend: "http://192.0.2.6"`, `backend: "http://192.0.2.6", path: /api/../admin`, []string{`listeners[0].routes[1].path: must be a clean absolute path, written decoded`, `got "/api/../admin"`}},
		{"route path with a parameter", `backend: "http://192.0.2.6"`, `backend: "http://192.0.2.6", path: "/api;x"`, []string{`listeners[0].routes[1].path: must be a clean absolute path`}},
		{"route path encoded", `backend: "http://192.0.2.6"`, `backend: "http://192.0.2.6", path: /caf%C3%A9`, []string{`listeners[0].routes[1].path: must be a clean absolute path`}},
		{"bad soap actions", "protocol: https\n    server_cert: ${DIR}/server.pem\n    server_key: ${DIR}/server.key\n    routes:\n      - {tenant: acme, host: acme.portal.example, path: /, backend: \"https://192.0.2.5:8443\", backend_ca: ${DIR}/internal-ca.pem}\n      - {tenant: globex, backend: \"http://192.0.2.6\"}",
			"protocol: soap\n    server_cert: ${DIR}/server.pem\n    server_key: ${DIR}/server.key\n    routes:\n      - {tenant: acme, host: acme.portal.example, path: /, backend: \"https://192.0.2.5:8443\", backend_ca: ${DIR}/internal-ca.pem, soap_actions: [\"urn:acme:Get {urn:acme}Get\"]}\n      - {tenant: globex, backend: \"http://192.0.2.6\", soap_actions: [\"urn:globex:Get\", \"urn:globex:\", \"urn:x {urn:y}\"]}",
			[]string{`listeners[0].routes[1].soap_actions[1]: bad soap action: "urn:globex:" names no operation`, "listeners[0].routes[1].soap_actions[2]: bad soap action: \"{urn:y}\": the Body element must be written {NAMESPACE}NAME"}},
		{"websocket on soap", "protocol: https\n    server_cert: ${DIR}/server.pem\n    server_key: ${DIR}/server.key\n    routes:\n      - {tenant: acme, host: acme.portal.example, path: /, backend: \"https://192.0.2.5:8443\", backend_ca: ${DIR}/internal-ca.pem}\n      - {tenant: globex, backend: \"http://192.0.2.6\"}",
			"protocol: soap\n    server_cert: ${DIR}/server.pem\n    server_key: ${DIR}/server.key\n    routes:\n      - {tenant: acme, host: acme.portal.example, path: /, backend: \"https://192.0.2.5:8443\", backend_ca: ${DIR}/internal-ca.pem, soap_actions: [\"urn:acme:Get\"]}\n      - {tenant: globex, backend: \"http://192.0.2.6\", soap_actions: [\"urn:globex:Get\"], websocket: true}",
			[]string{"listeners[0].routes[1].websocket: does not apply to a soap listener"}},
		{"websocket on telnet", `backend: "192.0.2.7:23"`, `backend: "192.0.2.7:23", websocket: true`, []string{"listeners[1].routes[0].websocket: does not apply to a tn3270 listener"}},
		{"path_params on telnet", `backend: "192.0.2.7:23"`, `backend: "192.0.2.7:23", path_params: true`, []string{"listeners[1].routes[0].path_params: does not apply to a tn3270 listener"}},
		{"host on telnet", `backend: "192.0.2.7:23"`, `backend: "192.0.2.7:23", host: mf.example`, []string{"listeners[1].routes[0].host: does not apply to a tn3270 listener"}},
		{"backend_ca on a plain telnet backend", `backend: "192.0.2.7:23"`, `backend: "192.0.2.7:23", backend_ca: ${DIR}/internal-ca.pem`, []string{"listeners[1].routes[0].backend_ca: backend_ca/backend_cert/backend_key need backend_tls: true"}},
		{"backend_ca on an http backend", `backend: "http://192.0.2.6"`, `backend: "http://192.0.2.6", backend_ca: ${DIR}/internal-ca.pem`, []string{"listeners[0].routes[1].backend_ca: backend_ca/backend_cert/backend_key need an https:// backend"}},
		{"refresh below the minimum", "static_ranges:", "feeds: [{name: aws, source: \"https://m.example/manifest.json\", format: aws, minisign_keys: [k], threshold: 1, refresh: 30s}]\nstatic_ranges:", []string{"feeds[0].refresh: must be at least 1m0s, got 30s: a shorter interval only hammers the mirror", "run `gatehouse feed refresh aws`"}},
		{"max_shrink 0", "static_ranges:", "feeds: [{name: aws, source: \"https://m.example/manifest.json\", format: aws, minisign_keys: [k], threshold: 1, refresh: 15m, max_shrink: 0}]\nstatic_ranges:", []string{"feeds[0].max_shrink: must be above 0 and at most 1"}},
		{"too many management pairs for xdp", "management: [{cidr: 198.51.100.0/28, ports: [22]}]", "management: [{cidr: 198.51.100.0/28, ports: [" + portList(1, 30) + "]}, {cidr: \"2001:db8:ff::/64\", ports: [22, 23, 24]}]",
			[]string{"enforcement.management: 33 range and port pairs, but the XDP filter holds at most 32"}},
		{"source prefix v6 zero", "mode: strict", "mode: strict\n  source_prefix: {v4: 32, v6: 0}", []string{"enforcement.source_prefix.v6: must be 32..128, got 0"}},
		{"source prefix v4 too long", "mode: strict", "mode: strict\n  source_prefix: {v4: 33, v6: 64}", []string{"enforcement.source_prefix.v4: must be 16..32, got 33"}},
		{"source prefix v4 too coarse", "mode: strict", "mode: strict\n  source_prefix: {v4: 8, v6: 64}", []string{"enforcement.source_prefix.v4: must be 16..32, got 8"}},
		// What the proxies refused at run while check passed it.
		{"backend listed twice", `backend: "http://192.0.2.6"`, `backends: ["http://192.0.2.6", "http://192.0.2.6"]`, []string{`listeners[0].routes[1].backends[1]: "http://192.0.2.6" is listed twice`}},
		{"health interval without a path", `backend: "http://192.0.2.6"`, `backend: "http://192.0.2.6", health_interval: 5s`, []string{"listeners[0].routes[1].health_interval: without health_path nothing is checked"}},
		{"backend url with a user", `backend: "http://192.0.2.6"`, `backend: "http://user@192.0.2.6"`, []string{"listeners[0].routes[1].backend: must be http(s)://host[:port][/path], without user, query or fragment"}},
		{"backend url with a query", `backend: "http://192.0.2.6"`, `backend: "http://192.0.2.6/?a=b"`, []string{"listeners[0].routes[1].backend: must be http(s)://host[:port][/path], without user, query or fragment"}},
		{"force_lu not an LU name", "lu_names:", `force_lu: "LU@1", lu_names:`, []string{`listeners[1].routes[0].force_lu: "LU@1" is not an LU name`}},
		{"hosts equal but for a trailing dot", "{tenant: globex, backend: \"http://192.0.2.6\"}", "{tenant: acme, host: acme.portal.example., backend: \"http://192.0.2.6\"}", []string{"listeners[0].routes[1]: overlaps route 0: same tenant, host and path"}},
		{"no tenants", "tenants:\n  - id: acme", "tenants: []\nold_tenants:\n  - id: acme", []string{"tenants: at least one tenant is required"}},
		{"missing extra cert", "    server_key: ${DIR}/server.key\n    routes:\n      - {tenant: acme, host", "    server_key: ${DIR}/server.key\n    extra_certs: [{cert: ${DIR}/nope.pem, key: ${DIR}/server.key}]\n    routes:\n      - {tenant: acme, host", []string{`listeners[0].extra_certs[0].cert: cannot read`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(goodYAML, tc.from) {
				t.Fatalf("fixture does not contain %q", tc.from)
			}
			_, err := parse(t, strings.Replace(goodYAML, tc.from, tc.to, 1), nil)
			if err == nil {
				t.Fatal("bad config accepted")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not wrap ErrInvalid: %v", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

// portList is "from, from+1, …, to" for a YAML flow sequence.
func portList(from, to int) string {
	var ps []string
	for p := from; p <= to; p++ {
		ps = append(ps, fmt.Sprint(p))
	}
	return strings.Join(ps, ", ")
}

// TestManagementPairsWithoutXDP: the XDP header's bound is XDP's alone;
// nftables takes any number of pairs.
func TestManagementPairsWithoutXDP(t *testing.T) {
	yaml := strings.Replace(goodYAML, "management: [{cidr: 198.51.100.0/28, ports: [22]}]",
		"xdp: \"off\"\n  management: [{cidr: 198.51.100.0/28, ports: ["+portList(1, 40)+"]}]", 1)
	cfg, err := parse(t, yaml, nil)
	if err != nil {
		t.Fatalf("40 management pairs without XDP refused: %v", err)
	}
	if n := len(cfg.Policy().Enforcement.Management[0].Ports); n != 40 {
		t.Errorf("%d ports compiled, want 40", n)
	}
	exact := strings.Replace(goodYAML, "ports: [22]}]", "ports: ["+portList(1, 32)+"]}]", 1)
	if _, err := parse(t, exact, nil); err != nil {
		t.Errorf("exactly %d pairs refused: %v", policy.MaxManagementPairs, err)
	}
}

func TestAllProblemsAtOnce(t *testing.T) {
	bad := strings.NewReplacer(
		"mode: strict", "mode: paranoid",
		"id: globex", "id: acme",
		"{tenant: globex,", "{tenant: nobody,",
		"state_dir:", "colour: blue\nstate_dir:",
		`"192.0.2.1:992"`, `":443"`,
	).Replace(goodYAML)
	_, err := parse(t, bad, nil)
	var ps Problems
	if !errors.As(err, &ps) {
		t.Fatalf("want Problems, got %v", err)
	}
	if len(ps) != 5 {
		t.Errorf("want 5 problems, got %d:\n%v", len(ps), err)
	}
}

func TestDefaultIsDocumented(t *testing.T) {
	// Every key line of the embedded default carries a comment above it or
	// belongs to a commented block, so --print-default explains itself.
	lines := strings.Split(string(Default), "\n")
	for i, l := range lines {
		trim := strings.TrimSpace(l)
		if trim == "" || strings.HasPrefix(trim, "#") {
			continue
		}
		if i == 0 || strings.TrimSpace(lines[i-1]) == "" {
			t.Errorf("default.yaml line %d %q has no comment above it", i+1, trim)
		}
	}
}

func TestParseRate(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint32
		ok   bool
	}{{"50/s", 50, true}, {"3000/m", 50, true}, {"", 0, true}, {"90/m", 0, false}, {"0/s", 0, false}, {"5/h", 0, false}, {"x/s", 0, false}} {
		got, err := ParseRate(tc.in)
		if (err == nil) != tc.ok || got.PerSecond != tc.want {
			t.Errorf("ParseRate(%q) = %+v, %v", tc.in, got, err)
		}
	}
}

// TestFeedBoundsDecode: a max_shrink left out stays unset (the default
// applies further down); one given is kept as given.
func TestFeedBoundsDecode(t *testing.T) {
	feed := "feeds: [{name: aws, source: \"https://m.example/manifest.json\", format: aws, minisign_keys: [k], threshold: 1, refresh: 15m%s}]\nstatic_ranges:"
	for _, tc := range []struct {
		extra string
		want  *float64
	}{{"", nil}, {", max_shrink: 0.5", new(0.5)}} {
		cfg, err := parse(t, strings.Replace(goodYAML, "static_ranges:", fmt.Sprintf(feed, tc.extra), 1), nil)
		if err != nil {
			t.Fatal(err)
		}
		got := cfg.Feeds[0].MaxShrink
		if (got == nil) != (tc.want == nil) || got != nil && *got != *tc.want {
			t.Errorf("%q: max_shrink %v, want %v", tc.extra, got, tc.want)
		}
	}
}

// TestRouteWebSocket: routes[].websocket reaches the compiled route, and
// is off unless set.
func TestRouteWebSocket(t *testing.T) {
	yaml := strings.Replace(goodYAML, `{tenant: globex, backend: "http://192.0.2.6"}`, `{tenant: globex, backend: "http://192.0.2.6", websocket: true}`, 1)
	cfg, err := parse(t, yaml, nil)
	if err != nil {
		t.Fatal(err)
	}
	routes := cfg.Policy().Listeners[0].Routes
	if routes[0].WebSocket || !routes[1].WebSocket {
		t.Errorf("websocket of the routes: %v, %v; want false, true", routes[0].WebSocket, routes[1].WebSocket)
	}
}
