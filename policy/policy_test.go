package policy

import (
	"errors"
	"net/netip"
	"testing"
)

func TestLastAddr(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.0/24":    "192.0.2.255",
		"192.0.2.128/25":  "192.0.2.255",
		"203.0.113.7/32":  "203.0.113.7",
		"0.0.0.0/0":       "255.255.255.255",
		"2001:db8::/32":   "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
		"2001:db8::/127":  "2001:db8::1",
		"198.51.100.0/22": "198.51.103.255",
	} {
		if got := LastAddr(netip.MustParsePrefix(in)); got.String() != want {
			t.Errorf("LastAddr(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestValidate(t *testing.T) {
	mp := netip.MustParsePrefix
	cases := []struct {
		name   string
		v4, v6 []netip.Prefix
		want   error
	}{
		{"good", []netip.Prefix{mp("192.0.2.0/25"), mp("198.51.100.0/24")}, []netip.Prefix{mp("2001:db8::/32")}, nil},
		{"host bits", []netip.Prefix{mp("192.0.2.1/24")}, nil, ErrNotCanonical},
		{"overlap", []netip.Prefix{mp("192.0.2.0/24"), mp("192.0.2.128/25")}, nil, ErrNotSorted},
		{"unsorted", []netip.Prefix{mp("198.51.100.0/24"), mp("192.0.2.0/24")}, nil, ErrNotSorted},
		{"v6 in v4 list", []netip.Prefix{mp("2001:db8::/32")}, nil, ErrWrongFamily},
		{"v4 in v6 list", nil, []netip.Prefix{mp("192.0.2.0/24")}, ErrWrongFamily},
	}
	for _, tc := range cases {
		p := &Policy{Admitted: Admitted{V4: tc.v4, V6: tc.v6}}
		err := p.Validate()
		if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Errorf("%s: Validate() = %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestContains(t *testing.T) {
	mp := netip.MustParsePrefix
	a := Admitted{V4: []netip.Prefix{mp("192.0.2.0/25"), mp("198.51.100.0/24")}, V6: []netip.Prefix{mp("2001:db8:1::/48")}}
	for addr, want := range map[string]bool{
		"192.0.2.0": true, "192.0.2.127": true, "192.0.2.128": false, "198.51.100.255": true,
		"198.51.101.0": false, "10.0.0.1": false, "::ffff:192.0.2.5": true,
		"2001:db8:1::1": true, "2001:db8:2::1": false,
	} {
		if got := a.Contains(netip.MustParseAddr(addr)); got != want {
			t.Errorf("Contains(%s) = %v, want %v", addr, got, want)
		}
	}
}

func TestProtectedPorts(t *testing.T) {
	p := &Policy{Listeners: []Listener{{Port: 992}, {Port: 443}, {Port: 443, Addr: netip.MustParseAddr("192.0.2.1")}}}
	got := p.ProtectedPorts()
	if len(got) != 2 || got[0] != (Port{"tcp", 443}) || got[1] != (Port{"tcp", 992}) {
		t.Errorf("ProtectedPorts() = %v", got)
	}
}
