package test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// TestDeployPrivsepDropIn: the unit with deploy/privsep.conf (appended, as
// systemd merges a drop-in's [Service]) still verifies, grants exactly the
// three capabilities of the switch of user on top of the unit's, and its
// "systemd-analyze security" rating stays at or below the figure the
// drop-in records.
func TestDeployPrivsepDropIn(t *testing.T) {
	analyze := netns.RequireTool(t, "systemd-analyze", "systemd")
	dropIn := string(readDeployFile(t, "privsep.conf"))
	m := regexp.MustCompile(`rates the unit\s*\n?#?\s*(\d+)\.(\d) `).FindStringSubmatch(dropIn)
	if m == nil {
		t.Fatal("privsep.conf does not record its systemd-analyze security rating")
	}
	for _, want := range []string{
		"\nCapabilityBoundingSet=CAP_SETUID CAP_SETGID CAP_SETPCAP\n",
		"\nAmbientCapabilities=CAP_SETUID CAP_SETGID CAP_SETPCAP\n",
	} {
		if !strings.Contains(dropIn, want) {
			t.Errorf("privsep.conf lacks %q", strings.TrimSpace(want))
		}
	}
	base := unitForVerify(t)
	unit, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "gatehouse.service")
	if err := os.WriteFile(path, append(append(unit, '\n'), dropIn...), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _ := runTool(t, nil, analyze, "verify", path) // its lines are judged below, not its status
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "gatehouse") {
			t.Errorf("systemd-analyze verify: %s", line)
		}
	}
	out, err = runTool(t, nil, analyze, "security", "--offline=true", "--threshold="+m[1]+m[2], "--no-pager", path)
	if strings.Contains(out, "Unknown command verb") || strings.Contains(out, "unrecognized option") {
		t.Skipf("this systemd-analyze cannot rate units offline (needs systemd 250+):\n%s", out)
	}
	if err != nil {
		t.Fatalf("exposure with the drop-in above the recorded %s.%s: %v\n%s", m[1], m[2], err, out)
	}
}
