package xdp

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// TestRepairAfterInterfaceRecreated: the interface is deleted (the filter
// goes with it) and, later, created again under the same name with another
// index, as when a VLAN or bond is rebuilt. While it is gone, Repair fails
// saying so, without trying to attach (no attach failure logged per mode);
// once it is back, Repair attaches the filter to the new interface, with
// the policy in force.
func TestRepairAfterInterfaceRecreated(t *testing.T) {
	tp := newTopo(t)
	var logs bytes.Buffer
	var e *Enforcer
	if err := tp.gate.Do(func() error {
		var err error
		e, err = New(Config{Interface: tp.iface, Mode: policy.XDPAuto, PinDir: tp.pinDir, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if err := e.Apply(testPolicy(policy.ModeListeners)); err != nil {
		t.Fatal(err)
	}
	oldIdx := e.ifindex

	tp.gate.Exec(t, "ip", "link", "del", tp.iface)
	if err := e.CheckAttached(); !errors.Is(err, ErrDetached) {
		t.Fatalf("CheckAttached with the interface gone: %v, want ErrDetached", err)
	}
	before := logs.Len()
	for range 3 {
		if err := e.Repair(); err == nil || !strings.Contains(err.Error(), tp.iface) {
			t.Errorf("Repair with the interface gone: %v, want an error naming it", err)
		}
	}
	if strings.Contains(logs.String()[before:], "attach failed") {
		t.Errorf("Repair tried to attach to an interface that is gone:\n%s", logs.String()[before:])
	}

	// The pair again, same names: another index, same namespaces.
	tp.gate.Exec(t, "ip", "link", "add", tp.iface, "type", "veth", "peer", "name", tp.peer, "netns", tp.cloud.Path())
	tp.gate.Exec(t, "ip", "link", "set", tp.iface, "up")
	if err := e.Repair(); err != nil {
		t.Fatalf("Repair with the interface back: %v", err)
	}
	if err := e.CheckAttached(); err != nil {
		t.Errorf("CheckAttached after the repair: %v", err)
	}
	if e.ifindex == oldIdx {
		t.Errorf("still on ifindex %d", oldIdx)
	}
	if link := tp.gate.Exec(t, "ip", "link", "show", tp.iface); !strings.Contains(link, "xdp") {
		t.Errorf("no XDP filter on the re-created %s:\n%s", tp.iface, link)
	}
}
