package test

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// The Debian package (make deb): built by deploy/deb/build.sh, checked by
// lintian, its file modes and owners read with dpkg-deb, then installed by
// a real dpkg -i, maintainer scripts and all, into a throwaway root: a
// chroot whose /usr, /etc and dpkg database are copy-on-write overlays of
// this machine's, mounted in a private mount namespace. The installed
// binary then checks the shipped example configuration. Nothing is
// written to the machine's own root.
func TestDebPackage(t *testing.T) {
	netns.RequirePriv(t)
	for _, tool := range []struct{ name, pkg string }{
		{"lintian", "lintian"}, {"help2man", "help2man"}, {"dpkg-deb", "dpkg"},
		{"unshare", "util-linux"}, {"mount", "mount"}, {"systemd-analyze", "systemd"},
	} {
		netns.RequireTool(t, tool.name, tool.pkg)
	}
	deb := buildDeb(t)

	t.Run("lintian", func(t *testing.T) {
		out, err := runLong(t, 5*time.Minute, "", "lintian", "--fail-on", "error,warning", "--display-info", deb)
		if err != nil {
			t.Fatalf("lintian: %v\n%s", err, out)
		}
		t.Logf("lintian:\n%s", out)
	})

	t.Run("contents", func(t *testing.T) { checkDebContents(t, deb) })

	t.Run("install", func(t *testing.T) { checkDebInstall(t, deb) })
}

// buildDeb runs make deb's script into a temporary directory.
func buildDeb(t *testing.T) string {
	t.Helper()
	out, err := runLong(t, 10*time.Minute, "..", "env", "OUT="+t.TempDir(), "deploy/deb/build.sh")
	if err != nil {
		t.Fatalf("deploy/deb/build.sh: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	deb := lines[len(lines)-1]
	if !strings.HasSuffix(deb, ".deb") {
		t.Fatalf("build.sh did not name its package:\n%s", out)
	}
	return deb
}

func runLong(t *testing.T, timeout time.Duration, dir, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// checkDebContents: the modes and owners of what the package ships, the
// conffile, and the packaged unit, which is deploy's with /usr/bin.
func checkDebContents(t *testing.T, deb string) {
	out, err := runLong(t, time.Minute, "", "dpkg-deb", "--contents", deb)
	if err != nil {
		t.Fatalf("dpkg-deb --contents: %v\n%s", err, out)
	}
	type entry struct{ mode, owner string }
	got := map[string]entry{}
	s := bufio.NewScanner(strings.NewReader(out))
	for s.Scan() {
		f := strings.Fields(s.Text())
		if len(f) < 6 {
			continue
		}
		path := strings.TrimSuffix(strings.TrimPrefix(f[5], "."), "/")
		got[path] = entry{f[0], f[1]}
		if f[1] != "root/root" {
			t.Errorf("%s owned by %s in the package, want root/root (postinst hands out the rest)", path, f[1])
		}
		if strings.ContainsAny(f[0][1:], "sStT") || f[0][8] == 'w' {
			t.Errorf("%s has mode %s: no setuid, setgid, sticky or world-writable entries", path, f[0])
		}
	}
	for path, mode := range map[string]string{
		"/usr/bin/gatehouse":                                           "-rwxr-xr-x",
		"/lib/systemd/system/gatehouse.service":                        "-rw-r--r--",
		"/etc/gatehouse":                                               "drwxr-x---",
		"/etc/gatehouse/gatehouse.yaml":                                "-rw-------",
		"/var/lib/gatehouse":                                           "drwx------",
		"/var/log/gatehouse":                                           "drwxr-x---",
		"/usr/share/man/man8/gatehouse.8.gz":                           "-rw-r--r--",
		"/usr/share/doc/gatehouse/copyright":                           "-rw-r--r--",
		"/usr/share/doc/gatehouse/changelog.gz":                        "-rw-r--r--",
		"/usr/share/doc/gatehouse/examples/gatehouse.yaml":             "-rw-r--r--",
		"/usr/share/doc/gatehouse/examples/keepalived/keepalived.conf": "-rw-r--r--",
		"/usr/share/gatehouse/grafana-dashboard.json":                  "-rw-r--r--",
		"/usr/share/gatehouse/prometheus-alerts.yaml":                  "-rw-r--r--",
		"/usr/share/lintian/overrides/gatehouse":                       "-rw-r--r--",
	} {
		if e, ok := got[path]; !ok {
			t.Errorf("%s missing from the package", path)
		} else if e.mode != mode {
			t.Errorf("%s: mode %s, want %s", path, e.mode, mode)
		}
	}

	ctrl := t.TempDir()
	if out, err := runLong(t, time.Minute, "", "dpkg-deb", "--control", deb, ctrl); err != nil {
		t.Fatalf("dpkg-deb --control: %v\n%s", err, out)
	}
	cf, err := os.ReadFile(filepath.Join(ctrl, "conffiles"))
	if err != nil || strings.TrimSpace(string(cf)) != "/etc/gatehouse/gatehouse.yaml" {
		t.Errorf("conffiles: %q (%v), want exactly /etc/gatehouse/gatehouse.yaml", cf, err)
	}

	// The unit: deploy/gatehouse.service, the binary's path (and the
	// install note) aside, line for line.
	root := t.TempDir()
	if out, err := runLong(t, time.Minute, "", "dpkg-deb", "--extract", deb, root); err != nil {
		t.Fatalf("dpkg-deb --extract: %v\n%s", err, out)
	}
	unitPath := filepath.Join(root, "lib/systemd/system/gatehouse.service")
	packaged, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	source := readDeployFile(t, "gatehouse.service")
	pl, sl := strings.Split(string(packaged), "\n"), strings.Split(string(source), "\n")
	if len(pl) != len(sl) {
		t.Fatalf("packaged unit has %d lines, deploy's %d", len(pl), len(sl))
	}
	for i := range pl {
		if pl[i] != sl[i] && !strings.HasPrefix(sl[i], "# Install:") &&
			pl[i] != strings.ReplaceAll(sl[i], "/usr/local/bin/gatehouse", "/usr/bin/gatehouse") {
			t.Errorf("packaged unit line %d: %q, deploy's %q", i+1, pl[i], sl[i])
		}
	}
	for _, want := range []string{"ExecStart=/usr/bin/gatehouse run ", "ExecStartPre=/usr/bin/gatehouse check "} {
		if !strings.Contains(string(packaged), want) {
			t.Errorf("packaged unit lacks %q", want)
		}
	}
	// Its exposure rating is deploy's recorded one.
	m := regexp.MustCompile(`rates\s*\n?#?\s*this unit (\d+)\.(\d) `).FindStringSubmatch(string(source))
	if m == nil {
		t.Fatal("gatehouse.service does not record its systemd-analyze security rating")
	}
	if out, err := runLong(t, time.Minute, "", "systemd-analyze", "security", "--offline=true",
		"--threshold="+m[1]+m[2], "--no-pager", unitPath); err != nil {
		t.Errorf("packaged unit rates worse than the recorded %s.%s: %v\n%s", m[1], m[2], err, lastLines(out, 3))
	}
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
