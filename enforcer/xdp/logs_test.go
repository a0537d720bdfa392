package xdp

import (
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/internal/testkit"
	"github.com/gatehouse-dmz/gatehouse/policy"
)

// The daemon applies a generation to every layer and says once whether it
// took: the layer's own line is at debug, and its errors name neither the
// layer nor the generation, which the daemon adds ("apply generation 7 to
// xdp: …").
func TestApplyLogsAtDebugAndErrorsSayWhatFailed(t *testing.T) {
	tp := newTopo(t)
	buf := &testkit.LogBuffer{}
	var e *Enforcer
	err := tp.gate.Do(func() error {
		var err error
		e, err = New(Config{Interface: tp.iface, PinDir: tp.pinDir,
			Logger: slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelInfo}))})
		return err
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { Teardown(tp.pinDir, tp.iface); e.Close() })

	p := testPolicy(policy.ModeListeners)
	if err := e.Apply(p); err != nil {
		t.Fatal(err)
	}
	mark := len(buf.String())
	p2 := testPolicy(policy.ModeListeners)
	p2.Generation = 2
	if err := e.Apply(p2); err != nil {
		t.Fatal(err)
	}
	if got := buf.String()[mark:]; got != "" {
		t.Errorf("a generation applied logged at info:\n%s", got)
	}

	bad := testPolicy(policy.ModeListeners)
	bad.Generation = 3
	for i := range 40 {
		bad.Enforcement.Management = append(bad.Enforcement.Management, policy.Management{
			Prefix: netip.MustParsePrefix("192.0.2.0/24"), Ports: []uint16{uint16(2000 + i)}})
	}
	want := "encode: more than 32: too many management range and port pairs"
	if err := e.Apply(bad); err == nil || err.Error() != want {
		t.Errorf("Apply of 40 management pairs: %v, want %q", err, want)
	}
	if err := e.Apply(nil); err == nil || err.Error() != "nil policy" {
		t.Errorf("Apply(nil): %v, want %q", err, "nil policy")
	}
	if strings.Contains(buf.String()[mark:], "level=ERROR") {
		t.Errorf("a refused generation logged by the layer as well as by the daemon:\n%s", buf.String()[mark:])
	}
}
