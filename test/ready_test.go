package test

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// readyCheck runs `gatehouse status --ready args…` as keepalived's
// track_script would and returns its exit code and everything it printed.
func readyCheck(t *testing.T, args ...string) (int, string) {
	t.Helper()
	out, err := exec.Command(binary(t), append([]string{"status", "--ready"}, args...)...).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &ee):
		return ee.ExitCode(), string(out)
	}
	t.Fatalf("status --ready: %v", err)
	return 0, ""
}

// TestStatusReady: `gatehouse status --ready` says 0 only for a daemon that
// answers ready on its admin socket, and 1, silently, for everything else:
// a feed without a verified release after a reload, no daemon, a socket
// that accepts and never answers (a hung daemon, within --timeout), a
// configuration it cannot read.
func TestStatusReady(t *testing.T) {
	mirror := newFeedMirror(t, filepath.Join(t.TempDir(), "mirror"))
	mirror.publish(t, 1, "192.0.2.0/24\n")
	d, config := startFeedDaemon(t, mirror)

	if code, out := readyCheck(t, "-c", config); code != 0 || out != "" {
		t.Fatalf("ready daemon: exit %d, output %q; want 0 and nothing", code, out)
	}

	// A reload adds a feed whose mirror has no release yet: the policy
	// stays in force, the daemon is not ready, and says so on /readyz.
	raw, err := os.ReadFile(config)
	if err != nil {
		t.Fatal(err)
	}
	empty := t.TempDir()
	line := "  - {name: lab, "
	cfg := strings.Replace(string(raw), line, "  - {name: lab2, source: \"file://"+empty+"/manifest.json\", format: cidr, minisign_keys: [\""+
		mirror.pub.String()+"\"], threshold: 1, refresh: 1h}\n"+line, 1)
	if err := os.WriteFile(config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	d.waitFor(t, "not ready after the reload", func() bool { code, _ := d.get(t, "/readyz"); return code == 503 })
	if code, out := readyCheck(t, "-c", config); code != 1 || out != "" {
		t.Errorf("daemon without a release of lab2: exit %d, output %q; want 1 and nothing", code, out)
	}

	d.kill()
	sock := filepath.Join(filepath.Dir(config), "admin.sock")
	if code, out := readyCheck(t, "--socket", sock); code != 1 || out != "" {
		t.Errorf("killed daemon: exit %d, output %q; want 1 and nothing", code, out)
	}

	// A hung daemon: the kernel accepts on its socket, nothing answers.
	hung := filepath.Join(t.TempDir(), "hung.sock")
	ln, err := net.Listen("unix", hung)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	began := time.Now()
	if code, out := readyCheck(t, "--socket", hung, "--timeout", "300ms"); code != 1 || out != "" {
		t.Errorf("hung daemon: exit %d, output %q; want 1 and nothing", code, out)
	}
	// Not a speed assertion: without a bound it would never return.
	t.Logf("hung daemon answered not ready after %s", time.Since(began).Round(time.Millisecond))

	if code, out := readyCheck(t, "-c", filepath.Join(t.TempDir(), "missing.yaml")); code != 1 || out != "" {
		t.Errorf("unreadable configuration: exit %d, output %q; want 1 and nothing", code, out)
	}
}
