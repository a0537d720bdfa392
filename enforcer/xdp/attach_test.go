package xdp

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// TestPinMapsAgain: pinning the maps where they are pinned already (a
// repair, an upgrade's second pass) leaves every pin in place. A map
// remembers its pin and takes a Pin to the same path for done, so removing
// the file first used to lose the pin.
func TestPinMapsAgain(t *testing.T) {
	tp := newTopo(t)
	e := tp.newEnforcer(t)
	t.Cleanup(func() { Teardown(tp.pinDir, tp.iface); e.Close() })
	if err := e.Apply(testPolicy(policy.ModeListeners)); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := e.pinMaps(); err != nil {
			t.Fatal(err)
		}
		for _, name := range pinnedMaps {
			if _, err := os.Stat(filepath.Join(tp.pinDir, tp.iface, pinName(name))); err != nil {
				t.Errorf("%s not pinned after pinning again: %v", name, err)
			}
		}
	}
	if err := e.CheckAttached(); err != nil {
		t.Errorf("CheckAttached after pinning again: %v", err)
	}
}
