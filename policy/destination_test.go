package policy

import (
	"net/netip"
	"testing"
)

func TestParseDestination(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"10.1.0.0/24:443", "10.1.0.0/24:443", true},
		{"10.1.0.7/32:23", "10.1.0.7/32:23", true},
		{"2001:db8::/64:8000-8099", "2001:db8::/64:8000-8099", true},
		{"10.1.0.5/24:443", "", false}, // host bits
		{"10.1.0.5:443", "", false},    // no prefix length
		{"10.1.0.0/24", "", false},     // no port
		{"10.1.0.0/24:0", "", false},   // port 0
		{"10.1.0.0/24:70000", "", false},
		{"10.1.0.0/24:90-80", "", false}, // backwards
		{"::ffff:10.1.0.0/120:443", "", false},
		{"", "", false},
	} {
		d, err := ParseDestination(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("ParseDestination(%q) error %v, want ok=%v", tc.in, err, tc.ok)
			continue
		}
		if tc.ok && d.String() != tc.want {
			t.Errorf("ParseDestination(%q) = %s, want %s", tc.in, d, tc.want)
		}
	}
}

func TestDestinationAllows(t *testing.T) {
	d, err := ParseDestination("198.51.100.0/28:8000-8001")
	if err != nil {
		t.Fatal(err)
	}
	for ap, want := range map[string]bool{
		"198.51.100.5:8000":          true,
		"198.51.100.15:8001":         true,
		"[::ffff:198.51.100.5]:8000": true, // a mapped address is the IPv4 one
		"198.51.100.16:8000":         false,
		"198.51.100.5:8002":          false,
		"198.51.100.5:7999":          false,
	} {
		if got := d.Allows(netip.MustParseAddrPort(ap)); got != want {
			t.Errorf("%s allows %s = %v, want %v", d, ap, got, want)
		}
	}
}
