package nft

import (
	"log/slog"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/internal/testkit"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// The daemon applies a generation to every layer and says once whether it
// took: the layer's own line is at debug, and its errors name neither the
// layer nor the generation, which the daemon adds ("apply generation 7 to
// nftables: …").
func TestApplyLogsAtDebugAndErrorsSayWhatFailed(t *testing.T) {
	netns.RequirePriv(t)
	buf := &testkit.LogBuffer{}
	g := newGate(t, Config{Logger: slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	p := goldenPolicy()
	if err := g.e.Apply(p); err != nil {
		t.Fatal(err)
	}
	p2 := goldenPolicy()
	p2.Generation = 2
	p2.Admitted.V4 = prefixes("192.0.2.0/24")
	if err := g.e.Apply(p2); err != nil {
		t.Fatal(err)
	}
	if got := buf.String(); got != "" {
		t.Errorf("generations applied logged at info:\n%s", got)
	}

	bad := goldenPolicy()
	bad.Generation = 3
	bad.Enforcement.Mode = "open"
	want := `invalid policy for the kernel layers: unknown mode "open"`
	if err := g.e.Apply(bad); err == nil || err.Error() != want {
		t.Errorf("Apply of an unknown mode: %v, want %q", err, want)
	}
}
