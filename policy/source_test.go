package policy

import (
	"net/netip"
	"testing"
)

func TestSourcePrefixBits(t *testing.T) {
	for _, tc := range []struct {
		sp     SourcePrefix
		v4, v6 int
	}{
		{SourcePrefix{V4: 32, V6: 64}, 32, 64},
		{SourcePrefix{V4: 24, V6: 128}, 24, 128},
		{SourcePrefix{}, 32, 64}, // zero: the default
		{SourcePrefix{V4: 40, V6: 200}, 32, 64},
	} {
		if got := tc.sp.Bits(false); got != tc.v4 {
			t.Errorf("%+v: v4 bits %d, want %d", tc.sp, got, tc.v4)
		}
		if got := tc.sp.Bits(true); got != tc.v6 {
			t.Errorf("%+v: v6 bits %d, want %d", tc.sp, got, tc.v6)
		}
		// Bits is the length Source masks to.
		if got := tc.sp.Source(netip.MustParseAddr("2001:db8:1:2:3:4:5:6")).Bits(); got != tc.v6 {
			t.Errorf("%+v: Source gives /%d, Bits %d", tc.sp, got, tc.v6)
		}
	}
	if got := (SourcePrefix{V4: 32, V6: 64}).Source(netip.MustParseAddr("2001:db8:1:2:ffff::1")); got.String() != "2001:db8:1:2::/64" {
		t.Errorf("Source = %s", got)
	}
}
