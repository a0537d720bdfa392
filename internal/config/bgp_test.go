package config

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

const bgpYAML = `
bgp:
  local_as: 64513
  router_id: 198.51.100.2
  neighbors:
    - {address: 198.51.100.1, as: 64512}
    - {address: "2001:db8:1::1", as: 64512, password: s3cret}
  announce: [203.0.113.10/32, "2001:db8:10::10", 203.0.113.11]
  communities: ["64512:100"]
  drain: {withdraw_wait: 5s}
`

func TestBGPGood(t *testing.T) {
	cfg, err := parse(t, goodYAML+bgpYAML, nil)
	if err != nil {
		t.Fatalf("refused: %v", err)
	}
	b := cfg.BGP
	if !b.Enabled() || b.LocalAS != 64513 || b.Drain.WithdrawWait != 5*time.Second || b.Neighbors[1].Password != "s3cret" {
		t.Errorf("bgp = %+v", b)
	}
	want := []netip.Prefix{netip.MustParsePrefix("203.0.113.10/32"), netip.MustParsePrefix("2001:db8:10::10/128"), netip.MustParsePrefix("203.0.113.11/32")}
	if got := b.Prefixes(); !slices.Equal(got, want) {
		t.Errorf("prefixes = %v, want %v", got, want)
	}
	if got := b.CommunityValues(); !slices.Equal(got, []uint32{64512<<16 | 100}) {
		t.Errorf("communities = %v", got)
	}
}

func TestBGPOffByDefault(t *testing.T) {
	cfg, err := parse(t, goodYAML, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.BGP.Enabled() || cfg.BGP.Drain.WithdrawWait != 2*time.Second {
		t.Errorf("default bgp = %+v", cfg.BGP)
	}
}

// Each bad value is reported at its key path, and nothing is accepted.
func TestBGPRefused(t *testing.T) {
	for name, tc := range map[string]struct{ yaml, path, says string }{
		"no local_as":      {"bgp: {neighbors: [{address: 198.51.100.1, as: 64512}]}", "bgp.local_as", "required"},
		"router id v6":     {strings.Replace(bgpYAML, "router_id: 198.51.100.2", `router_id: "2001:db8::2"`, 1), "bgp.router_id", "not an IPv4"},
		"router id empty":  {strings.Replace(bgpYAML, "router_id: 198.51.100.2", `router_id: ""`, 1), "bgp.router_id", "not an IPv4"},
		"no neighbours":    {"bgp: {local_as: 64513, router_id: 198.51.100.2, announce: [203.0.113.10/32]}", "bgp.neighbors", "required"},
		"bad neighbour":    {strings.Replace(bgpYAML, "address: 198.51.100.1,", "address: router1,", 1), "bgp.neighbors[0].address", "not an IPv4 or IPv6"},
		"dup neighbour":    {strings.Replace(bgpYAML, `"2001:db8:1::1"`, "198.51.100.1", 1), "bgp.neighbors[1].address", "already bgp.neighbors[0]"},
		"neighbour no AS":  {strings.Replace(bgpYAML, "address: 198.51.100.1, as: 64512", "address: 198.51.100.1", 1), "bgp.neighbors[0].as", "required"},
		"long password":    {strings.Replace(bgpYAML, "s3cret", strings.Repeat("x", 81), 1), "bgp.neighbors[1].password", "80 bytes"},
		"wide prefix":      {strings.Replace(bgpYAML, "203.0.113.10/32", "203.0.113.0/24", 1), "bgp.announce[0]", "only host routes"},
		"not an address":   {strings.Replace(bgpYAML, "203.0.113.10/32", "vip", 1), "bgp.announce[0]", "not an address"},
		"dup prefix":       {strings.Replace(bgpYAML, "203.0.113.11]", "203.0.113.10]", 1), "bgp.announce[2]", "already bgp.announce[0]"},
		"nothing":          {strings.Replace(bgpYAML, `announce: [203.0.113.10/32, "2001:db8:10::10", 203.0.113.11]`, "announce: []", 1), "bgp.announce", "required"},
		"no v6 neighbour":  {strings.Replace(bgpYAML, `"2001:db8:1::1"`, "198.51.100.3", 1), "bgp.announce[1]", "no IPv6 neighbour"},
		"bad community":    {strings.Replace(bgpYAML, `"64512:100"`, `"4200000000:1"`, 1), "bgp.communities[0]", "AS:value"},
		"community no sep": {strings.Replace(bgpYAML, `"64512:100"`, `"64512"`, 1), "bgp.communities[0]", "AS:value"},
		"wait too long":    {strings.Replace(bgpYAML, "withdraw_wait: 5s", "withdraw_wait: 5m", 1), "bgp.drain.withdraw_wait", "0s..1m"},
		"wait negative":    {strings.Replace(bgpYAML, "withdraw_wait: 5s", "withdraw_wait: -1s", 1), "bgp.drain.withdraw_wait", "0s..1m"},
		"unknown key":      {strings.Replace(bgpYAML, "drain:", "hold_time: 3\n  drain:", 1), "bgp.hold_time", "unknown key"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := parse(t, goodYAML+tc.yaml, nil)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.path+": ") || !strings.Contains(err.Error(), tc.says) {
				t.Errorf("want %s: …%s…, got:\n%v", tc.path, tc.says, err)
			}
		})
	}
}

func TestBGPRefusedOnConnector(t *testing.T) {
	_, err := parse(t, connectorYAML+bgpYAML, nil)
	if err == nil || !strings.Contains(err.Error(), "bgp.local_as: a connector") {
		t.Fatalf("want a connector refused, got %v", err)
	}
}
