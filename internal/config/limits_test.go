package config

import (
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

func TestLimitsDefaults(t *testing.T) {
	cfg, err := parse(t, goodYAML, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Policy()
	want := policy.Limits{
		MaxConns: 10000, MaxPreHandshake: 1000, MaxPreHandshakePerSource: 64,
		HandshakeTimeout: 10 * time.Second, DrainTimeout: 30 * time.Second, MaxConnsPerTenant: 2000,
		HTTP: policy.HTTPLimits{
			MaxInFlight: 256, MaxHeaderBytes: 64 << 10, MaxBodyBytes: 32 << 20, BodyBufferBytes: 1 << 20,
			BodyBufferTotal: 256 << 20, BodyBufferTimeout: 60 * time.Second, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second,
			BodyReadTimeout: 30 * time.Second, BackendTimeout: 60 * time.Second, Engine: "fast",
		},
		TCP: policy.StreamLimits{IdleTimeout: time.Hour, MaxSession: 24 * time.Hour},
		Telnet: policy.TelnetLimits{
			StreamLimits:         policy.StreamLimits{IdleTimeout: 30 * time.Minute, MaxSession: 12 * time.Hour},
			MaxSessionsPerTenant: 500,
		},
	}
	for _, l := range p.Listeners {
		if l.Limits != want {
			t.Errorf("listener %s limits = %+v\nwant %+v", l.Name, l.Limits, want)
		}
		if l.TenantLimits != nil {
			t.Errorf("listener %s has tenant limits %v without any override", l.Name, l.TenantLimits)
		}
		if got := l.ForTenant("acme"); got != want {
			t.Errorf("ForTenant without override = %+v", got)
		}
	}
	if sp := p.Enforcement.SourcePrefix; sp != (policy.SourcePrefix{V4: 32, V6: 64}) {
		t.Errorf("source prefix = %+v", sp)
	}
}

// TestLimitsOverrides: a listener's keys replace the defaults, a tenant's
// replace the listener's on the listeners that route the tenant, and keys
// left out inherit.
func TestLimitsOverrides(t *testing.T) {
	y := strings.Replace(goodYAML, `    routes:
      - {tenant: acme, host: acme.portal.example`, `    limits:
      connections: 500
      pre_handshake: 100
      http: {max_body_size: 2MiB, in_flight_per_tenant: 16}
      tcp: {idle_timeout: 0s}
    routes:
      - {tenant: acme, host: acme.portal.example`, 1)
	y = strings.Replace(y, `  - id: globex
    client_ca: ${DIR}/globex-ca.pem`, `  - id: globex
    client_ca: ${DIR}/globex-ca.pem
    limits:
      connections_per_tenant: 100
      http: {max_body_size: 64MiB, body_buffer_size: 0B}`, 1)
	cfg, err := parse(t, y, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Policy()
	web, mf := p.Listeners[0], p.Listeners[1]
	if web.Limits.MaxConns != 500 || web.Limits.HTTP.MaxBodyBytes != 2<<20 || web.Limits.HTTP.MaxInFlight != 16 ||
		web.Limits.TCP.IdleTimeout != 0 || web.Limits.TCP.MaxSession != 24*time.Hour || web.Limits.MaxConnsPerTenant != 2000 {
		t.Errorf("web limits = %+v", web.Limits)
	}
	g := web.ForTenant("globex")
	if g.MaxConnsPerTenant != 100 || g.HTTP.MaxBodyBytes != 64<<20 || g.HTTP.BodyBufferBytes != 0 ||
		g.MaxConns != 500 || g.HTTP.MaxInFlight != 16 {
		t.Errorf("globex on web = %+v", g)
	}
	if a := web.ForTenant("acme"); a != web.Limits {
		t.Errorf("acme on web = %+v, want the listener's", a)
	}
	if _, ok := mf.TenantLimits["globex"]; ok || mf.Limits.MaxConns != 10000 {
		t.Errorf("mainframe (which does not route globex) = %+v %v", mf.Limits, mf.TenantLimits)
	}
}

func TestLimitsProblems(t *testing.T) {
	cases := []struct {
		name, from, to string
		want           []string
	}{
		{"tenant overrides a listener-wide key",
			"    client_ca: ${DIR}/globex-ca.pem",
			"    client_ca: ${DIR}/globex-ca.pem\n    limits: {pre_handshake: 5, http: {idle_timeout: 5s}}",
			[]string{"tenants[1].limits.pre_handshake: is decided before a client proves its tenant", "tenants[1].limits.http.idle_timeout: is decided before"}},
		{"telnet limits on an https listener",
			"    protocol: https\n",
			"    protocol: https\n    limits: {telnet: {sessions_per_tenant: 4}}\n",
			[]string{"listeners[0].limits.telnet.sessions_per_tenant: does not apply to a https listener"}},
		{"pre-handshake budget as large as the listener",
			"    protocol: https\n",
			"    protocol: https\n    limits: {connections: 1000}\n",
			[]string{"listeners[0].limits.connections: pre_handshake (1000) must be below connections (1000)"}},
		{"a tenant's values checked against the listener they resolve on",
			"    client_ca: ${DIR}/globex-ca.pem",
			"    client_ca: ${DIR}/globex-ca.pem\n    limits: {http: {body_buffer_size: 64MiB}}",
			[]string{"tenants[1].limits.http.body_buffer_size: body_buffer_size (64MiB) must be between 0B (stream every body) and max_body_size (32MiB) (on listener web)"}},
		{"sizes and durations",
			"    protocol: https\n",
			"    protocol: https\n    limits: {http: {max_header_size: 1KiB, read_header_timeout: 0s}, tcp: {max_session: 10ms}, drain_timeout: -1s}\n",
			[]string{"listeners[0].limits.http.max_header_size: must be between 4KiB and 1MiB, got 1KiB",
				"listeners[0].limits.http.read_header_timeout: must be at least 1s",
				"listeners[0].limits.tcp.max_session: must be 0 (no limit) or at least 1s",
				"listeners[0].limits.drain_timeout: must not be negative"}},
		{"an HTTP engine chosen per tenant",
			"    client_ca: ${DIR}/globex-ca.pem",
			"    client_ca: ${DIR}/globex-ca.pem\n    limits: {http: {engine: fast}}",
			[]string{"tenants[1].limits.http.engine: is decided before a client proves its tenant"}},
		{"an unknown HTTP engine",
			"    protocol: https\n",
			"    protocol: https\n    limits: {http: {engine: turbo}}\n",
			[]string{"listeners[0].limits.http.engine: must be std or fast, got \"turbo\""}},
		{"body buffer budget and timeout",
			"    protocol: https\n",
			"    protocol: https\n    limits: {http: {body_buffer_total: 4MiB, body_buffer_timeout: 0s}}\n",
			[]string{"listeners[0].limits.http.body_buffer_total: body_buffer_total (4MiB) must hold at least two bodies of body_buffer_size (1MiB) and two SOAP envelopes, and at least 8MiB",
				"listeners[0].limits.http.body_buffer_timeout: must be at least 1s"}},
		{"a tenant body too large for the listener budget",
			"    client_ca: ${DIR}/globex-ca.pem",
			"    client_ca: ${DIR}/globex-ca.pem\n    limits: {http: {body_buffer_size: 200MiB, max_body_size: 1GiB}}",
			[]string{"tenants[1].limits.http.body_buffer_size: body_buffer_total (256MiB) must hold at least two bodies of body_buffer_size (200MiB)"}},
		{"the budget is per listener",
			"    client_ca: ${DIR}/globex-ca.pem",
			"    client_ca: ${DIR}/globex-ca.pem\n    limits: {http: {body_buffer_total: 1GiB}}",
			[]string{"tenants[1].limits.http.body_buffer_total: is decided before a client proves its tenant"}},
		{"a size in decimal units",
			"    protocol: https\n",
			"    protocol: https\n    limits: {http: {max_body_size: 10MB}}\n",
			[]string{"listeners[0].limits.http.max_body_size:", "write binary units"}},
		{"an unknown limit",
			"    protocol: https\n",
			"    protocol: https\n    limits: {http: {max_bodysize: 1MiB}}\n",
			[]string{"listeners[0].limits.http.max_bodysize: unknown key"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(goodYAML, tc.from) {
				t.Fatalf("fixture lacks %q", tc.from)
			}
			_, err := parse(t, strings.Replace(goodYAML, tc.from, tc.to, 1), nil)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("missing %q in:\n%v", w, err)
				}
			}
			if n := strings.Count(err.Error(), "\n"); n > len(tc.want)+1 {
				t.Errorf("%d problems for %d expected (defaults repeated per listener?):\n%v", n, len(tc.want), err)
			}
		})
	}
}

func TestByteSize(t *testing.T) {
	for in, want := range map[string]ByteSize{
		"0": 0, "512B": 512, "64KiB": 64 << 10, "64k": 64 << 10, "32MiB": 32 << 20, "1GiB": 1 << 30, " 2 MiB ": 2 << 20,
	} {
		got, err := ParseByteSize(in)
		if err != nil || got != want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "-1KiB", "1.5MiB", "10MB", "lots", "99999999999GiB"} {
		if _, err := ParseByteSize(bad); err == nil {
			t.Errorf("ParseByteSize(%q) accepted", bad)
		}
	}
	if s := ByteSize(3 << 20).String(); s != "3MiB" {
		t.Errorf("String = %s", s)
	}
}

// TestStaticRangesGuard: a static range broader than the feeds' guard (a
// /0 above all) is refused unless the admin says it is meant. Before, a
// typo of 0.0.0.0/0 admitted the whole Internet without a word.
func TestStaticRangesGuard(t *testing.T) {
	for _, r := range []string{"0.0.0.0/0", "::/0", "10.0.0.0/7", "2001:c00::/23"} {
		y := strings.Replace(goodYAML, `static_ranges: [203.0.113.0/24, "2001:db8::/48"]`, `static_ranges: ["`+r+`"]`, 1)
		_, err := parse(t, y, nil)
		if err == nil || !strings.Contains(err.Error(), "static_ranges[0]: "+r+" is broader than rules.min_prefix") {
			t.Errorf("%s: %v", r, err)
		}
		if _, err := parse(t, y+"rules: {broad_static_ranges: true}\n", nil); err != nil {
			t.Errorf("%s with broad_static_ranges: %v", r, err)
		}
	}
}
