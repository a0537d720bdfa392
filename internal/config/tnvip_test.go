package config

import (
	"strings"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// vipListener appends a tnvip listener with one route to goodYAML; route
// is the rest of the route's flow mapping, listener extra listener keys.
func vipListener(listener, route string) string {
	return goodYAML + `  - name: gcos
    listen: "192.0.2.1:9923"
    protocol: tnvip
    server_cert: ${DIR}/server.pem
    server_key: ${DIR}/server.key` + listener + `
    routes:
      - {tenant: acme, backend: "192.0.2.9:23"` + route + `}
`
}

// TestTNVIPListener: tnvip is a listener protocol with terminal_types,
// START_TLS and limits.telnet, like the other terminal protocols.
func TestTNVIPListener(t *testing.T) {
	cfg, err := parse(t, vipListener("\n    starttls: true\n    limits: {telnet: {sessions_per_tenant: 7}}", `, terminal_types: ["VIP7801", "VIP7804*"]`), nil)
	if err != nil {
		t.Fatal(err)
	}
	l := cfg.Policy().Listeners[2]
	if l.Protocol != policy.ProtoTNVIP || !l.StartTLS {
		t.Fatalf("listener %s starttls %v, want tnvip with starttls", l.Protocol, l.StartTLS)
	}
	if got := l.Routes[0].TerminalTypes; len(got) != 2 || got[0] != "VIP7801" || got[1] != "VIP7804*" {
		t.Errorf("terminal_types %v", got)
	}
	if got := l.ForTenant("acme").Telnet.MaxSessionsPerTenant; got != 7 {
		t.Errorf("limits.telnet.sessions_per_tenant = %d, want 7", got)
	}
}

// TestTNVIPRouteProblems: the settings of the other terminal protocols, and
// terminal types no terminal can send, are refused with their key paths.
func TestTNVIPRouteProblems(t *testing.T) {
	for _, tc := range []struct{ route, want string }{
		{`, lu_names: ["ACMELU01"]`, "listeners[2].routes[0].lu_names: does not apply to a tnvip listener"},
		{`, force_lu: ACMELU01`, "listeners[2].routes[0].force_lu: does not apply to a tnvip listener"},
		{`, devnames: ["ACMEDSP*"]`, "listeners[2].routes[0].devnames: does not apply to a tnvip listener"},
		{`, refuse_auto_sign_on: true`, "listeners[2].routes[0].refuse_auto_sign_on: does not apply to a tnvip listener"},
		{`, terminal_types: ["VIP7801", "VIP 7804"]`, `listeners[2].routes[0].terminal_types[1]: terminal type pattern matches no terminal type: "VIP 7804"`},
		{`, terminal_types: [""]`, "listeners[2].routes[0].terminal_types[0]: terminal type pattern matches no terminal type: empty"},
		{`, terminal_types: ["VIP7801@MBX"]`, "listeners[2].routes[0].terminal_types[0]: terminal type pattern matches no terminal type"},
	} {
		_, err := parse(t, vipListener("", tc.route), nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("route %s: %v\nwant a problem %q", tc.route, err, tc.want)
		}
	}
	// The same check holds on the other terminal protocols.
	_, err := parse(t, strings.Replace(goodYAML, `terminal_types: ["IBM-3278-2-E"]`, `terminal_types: ["IBM-3278-2-E@LU1"]`, 1), nil)
	if err == nil || !strings.Contains(err.Error(), "listeners[1].routes[0].terminal_types[0]: terminal type pattern matches no terminal type") {
		t.Errorf("tn3270 terminal type with '@': %v", err)
	}
}
