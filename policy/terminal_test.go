package policy

import (
	"errors"
	"strings"
	"testing"
)

func TestCheckTerminalType(t *testing.T) {
	for _, ok := range []string{"IBM-3278-2-E", "IBM-*", "*", "VIP7801", "VIP78*", strings.Repeat("A", MaxTerminalType) + "*"} {
		if err := CheckTerminalType(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "VIP 7801", "IBM-3278@LU1", "VIP7801\x00", "VIP\xc3\xa9", strings.Repeat("A", MaxTerminalType+1)} {
		if err := CheckTerminalType(bad); !errors.Is(err, ErrTerminalType) {
			t.Errorf("%q accepted (%v)", bad, err)
		}
	}
}

func TestVIPModel(t *testing.T) {
	for _, ok := range []string{"VIP7800", "VIP7801", "VIP7804", "VIP7700", "VIP7760", "vip7801"} {
		if !VIPModel(ok) {
			t.Errorf("%q refused", ok)
		}
	}
	for _, bad := range []string{"", "VIP", "VIP780", "VIP78011", "VIP7801/MBX", "VIP6800", "VIP78A1", "XVIP780", "VT100", "IBM-3278-2", "VIP7801 "} {
		if VIPModel(bad) {
			t.Errorf("%q allowed", bad)
		}
	}
}
