package policy

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Destination is one entry of a connector's allow-list: the addresses of
// Prefix on the ports First to Last.
type Destination struct {
	Prefix      netip.Prefix
	First, Last uint16
}

// Allows reports whether a connection to ap falls inside d.
func (d Destination) Allows(ap netip.AddrPort) bool {
	a := ap.Addr().Unmap()
	return d.Prefix.Contains(a) && ap.Port() >= d.First && ap.Port() <= d.Last
}

func (d Destination) String() string {
	if d.First == d.Last {
		return fmt.Sprintf("%s:%d", d.Prefix, d.First)
	}
	return fmt.Sprintf("%s:%d-%d", d.Prefix, d.First, d.Last)
}

// ParseDestination reads "CIDR:port" or "CIDR:first-last", e.g.
// "10.1.0.0/24:443", "10.1.0.7/32:23", "2001:db8::/64:8000-8099". The
// prefix must be canonical (no host bits), as elsewhere in the config: an
// admin who wrote 10.1.0.5/24 meant something else.
func ParseDestination(s string) (Destination, error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 || !strings.Contains(s[:i], "/") {
		return Destination{}, fmt.Errorf("%q is not CIDR:port (e.g. 10.1.0.0/24:443)", s)
	}
	p, err := netip.ParsePrefix(s[:i])
	if err != nil {
		return Destination{}, fmt.Errorf("%q: %q is not a CIDR prefix", s, s[:i])
	}
	if p.Addr().Is4In6() || p.Addr().Zone() != "" {
		return Destination{}, fmt.Errorf("%q: write IPv4 in dotted form, without zones", s)
	}
	if p.Masked() != p {
		return Destination{}, fmt.Errorf("%q: %s has host bits set (did you mean %s?)", s, p, p.Masked())
	}
	first, last, ok := strings.Cut(s[i+1:], "-")
	if !ok {
		last = first
	}
	lo, err1 := strconv.ParseUint(first, 10, 16)
	hi, err2 := strconv.ParseUint(last, 10, 16)
	if err1 != nil || err2 != nil || lo == 0 || hi < lo {
		return Destination{}, fmt.Errorf("%q: the port must be 1..65535, or a range first-last", s)
	}
	return Destination{Prefix: p, First: uint16(lo), Last: uint16(hi)}, nil
}
