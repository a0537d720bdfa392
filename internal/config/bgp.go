package config

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// BGP makes the node announce its service addresses to its routers while
// it is ready (active/active behind ECMP). LocalAS 0: off.
type BGP struct {
	LocalAS     uint32        `mapstructure:"local_as"`
	RouterID    string        `mapstructure:"router_id"`
	Neighbors   []BGPNeighbor `mapstructure:"neighbors"`
	Announce    []string      `mapstructure:"announce"`
	Communities []string      `mapstructure:"communities"`
	Drain       BGPDrain      `mapstructure:"drain"`
}

// BGPNeighbor is one router to peer with.
type BGPNeighbor struct {
	Address  string `mapstructure:"address"`
	AS       uint32 `mapstructure:"as"`
	Password string `mapstructure:"password"`
}

// BGPDrain is what SIGTERM does before the sessions drain: withdraw, then
// wait WithdrawWait while still serving, so routers move new flows away.
type BGPDrain struct {
	WithdrawWait time.Duration `mapstructure:"withdraw_wait"`
}

// maxWithdrawWait bounds bgp.drain.withdraw_wait: systemd's stop timeout
// (90 s by default) must cover it and shutdown_grace.
const maxWithdrawWait = time.Minute

// Enabled reports whether the node speaks BGP.
func (b BGP) Enabled() bool { return b.LocalAS != 0 }

// Prefixes are the announced host routes (valid after validation).
func (b BGP) Prefixes() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range b.Announce {
		if p, err := parseHostRoute(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// CommunityValues are the communities as AS<<16|value (valid after
// validation).
func (b BGP) CommunityValues() []uint32 {
	var out []uint32
	for _, s := range b.Communities {
		if v, err := parseCommunity(s); err == nil {
			out = append(out, v)
		}
	}
	return out
}

func parseHostRoute(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		a, aerr := netip.ParseAddr(s)
		if aerr != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an address or prefix", s)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if p.Addr().Is4In6() || p.Addr().Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q: a plain IPv4 or IPv6 address is needed", s)
	}
	if p.Bits() != p.Addr().BitLen() {
		return netip.Prefix{}, fmt.Errorf("%q: only host routes (/32, /128) are announced: a wider prefix would draw traffic for addresses this node does not serve", s)
	}
	return p, nil
}

// parseCommunity reads an RFC 1997 community, "AS:value", each 0..65535.
func parseCommunity(s string) (uint32, error) {
	as, val, ok := strings.Cut(s, ":")
	a, err1 := strconv.ParseUint(as, 10, 16)
	v, err2 := strconv.ParseUint(val, 10, 16)
	if !ok || err1 != nil || err2 != nil {
		return 0, fmt.Errorf("%q is not a community AS:value (each 0..65535)", s)
	}
	return uint32(a)<<16 | uint32(v), nil
}

func (cfg *Config) validateBGP(c *checker) {
	b := cfg.BGP
	if !b.Enabled() {
		if len(b.Neighbors)+len(b.Announce)+len(b.Communities) > 0 || b.RouterID != "" {
			c.add("bgp.local_as", "required when bgp has neighbors, announce, communities or router_id (0 turns BGP off)")
		}
		return
	}
	if cfg.Role() == RoleConnector {
		c.add("bgp.local_as", "a connector serves no inbound address to announce: BGP is for appliances and gateways")
	}
	if r, err := netip.ParseAddr(b.RouterID); err != nil || !r.Is4() {
		c.add("bgp.router_id", "%q is not an IPv4 address (BGP identifiers are 32 bits; use this node's own IPv4 address)", b.RouterID)
	}
	if len(b.Neighbors) == 0 {
		c.add("bgp.neighbors", "required: at least one router to announce to")
	}
	fams := map[bool]bool{} // is4 → a neighbour of that family
	seen := map[netip.Addr]int{}
	for i, n := range b.Neighbors {
		p := fmt.Sprintf("bgp.neighbors[%d]", i)
		a, err := netip.ParseAddr(n.Address)
		if err != nil || a.Zone() != "" || a.Is4In6() {
			c.add(p+".address", "%q is not an IPv4 or IPv6 address", n.Address)
		} else {
			if j, dup := seen[a]; dup {
				c.add(p+".address", "%s is already bgp.neighbors[%d]", a, j)
			}
			seen[a] = i
			fams[a.Is4()] = true
		}
		if n.AS == 0 {
			c.add(p+".as", "required (1..4294967295)")
		}
		if len(n.Password) > 80 {
			c.add(p+".password", "longer than the 80 bytes a TCP MD5 key may have")
		}
	}
	if len(b.Announce) == 0 {
		c.add("bgp.announce", "required: the service addresses (/32, /128) this node announces while ready")
	}
	announced := map[netip.Prefix]int{}
	for i, s := range b.Announce {
		p := fmt.Sprintf("bgp.announce[%d]", i)
		hr, err := parseHostRoute(s)
		if err != nil {
			c.add(p, "%v", err)
			continue
		}
		if j, dup := announced[hr]; dup {
			c.add(p, "%s is already bgp.announce[%d]", hr, j)
		}
		announced[hr] = i
		if len(b.Neighbors) > 0 && !fams[hr.Addr().Is4()] {
			fam := "IPv6"
			if hr.Addr().Is4() {
				fam = "IPv4"
			}
			c.add(p, "%s: no %s neighbour to announce it to (each prefix goes to the neighbours of its own family)", hr, fam)
		}
	}
	for i, s := range b.Communities {
		if _, err := parseCommunity(s); err != nil {
			c.add(fmt.Sprintf("bgp.communities[%d]", i), "%v", err)
		}
	}
	if w := b.Drain.WithdrawWait; w < 0 || w > maxWithdrawWait {
		c.add("bgp.drain.withdraw_wait", "must be 0s..1m, got %v", w)
	}
}
