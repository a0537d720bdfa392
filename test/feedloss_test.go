package test

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/internal/testkit"

	"aead.dev/minisign"

	"github.com/gatehouse-dmz/gatehouse/rules"
)

// feedMirror is a signed cidr feed "lab" published on a file:// mirror.
type feedMirror struct {
	dir string
	key minisign.PrivateKey
	pub minisign.PublicKey
}

func newFeedMirror(t *testing.T, dir string) *feedMirror {
	t.Helper()
	pub, key, err := minisign.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	m := &feedMirror{dir: dir, key: key, pub: pub}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return m
}

// publish signs and writes release serial with body (cidr lines).
func (m *feedMirror) publish(t *testing.T, serial uint64, body string) {
	t.Helper()
	now := time.Now()
	man := rules.Manifest{Source: "lab", Serial: serial, Issued: now.Add(-time.Minute), Expires: now.Add(24 * time.Hour),
		Files: []rules.ManifestFile{rules.NewManifestFile("lab.txt", "cidr", []byte(body))}}
	raw, err := man.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		"lab.txt":              []byte(body),
		rules.ManifestName:     raw,
		rules.SignatureName(1): rules.SignManifest(raw, m.key, "test"),
	} {
		if err := os.WriteFile(filepath.Join(m.dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// feedOnly rewrites the topology's configuration so that the admitted
// ranges come from the signed feed alone (state in tp.dir/state).
func (tp *topology) feedOnly(t *testing.T, m *feedMirror) {
	t.Helper()
	b, err := os.ReadFile(tp.config)
	if err != nil {
		t.Fatal(err)
	}
	cfg := regexp.MustCompile(`(?m)^state_dir: .*$`).ReplaceAllString(string(b), "state_dir: "+filepath.Join(tp.dir, "state"))
	cfg = regexp.MustCompile(`(?m)^static_ranges: .*$`).ReplaceAllString(cfg, fmt.Sprintf(`static_ranges: []
feeds:
  - {name: lab, source: "file://%s/manifest.json", format: cidr, minisign_keys: ["%s"], threshold: 1, refresh: 1h}
rules: {reserved_exempt: [192.0.2.0/24, "2001:db8::/32"]}`, m.dir, m.pub.String()))
	if err := os.WriteFile(tp.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
}

// stopAndTeardown stops the topology's daemon with SIGTERM and lifts its
// kernel state, so that the next start begins from nothing.
func (tp *topology) stopAndTeardown(t *testing.T) {
	t.Helper()
	if err := tp.d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-tp.d.exited
	if out, err := tp.dmz.Command(binary(t), "teardown", "--yes", "--pin-dir", tp.pinDir, "-c", tp.config).CombinedOutput(); err != nil {
		t.Fatalf("teardown: %v\n%s", err, out)
	}
}

// startUnready runs the daemon in the dmz namespace and waits until its
// metrics endpoint answers, ready or not.
func (tp *topology) startUnready(t *testing.T) {
	t.Helper()
	d := &daemonProc{cmd: tp.dmz.Command(binary(t), "run", "-c", tp.config), out: &testkit.LogBuffer{}, metrics: "127.0.0.1:9477",
		exited: make(chan struct{}), http: tp.metricsClient}
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.exitErr = d.cmd.Wait(); close(d.exited) }()
	t.Cleanup(func() { d.kill() })
	d.waitFor(t, "the metrics endpoint", func() bool { code, _ := d.get(t, "/healthz"); return code == http.StatusOK })
	tp.d = d
}

// TestLostStateKeepsPinnedGeneration: a daemon enforcing a signed feed is
// killed; its last-known-good file is then truncated (and, the second time,
// its whole state directory removed) while the feed mirror is unreachable.
// The restarted daemon must not replace the pinned XDP generation and the
// nftables admitted sets with an empty set: the admitted cloud address
// still connects, the intruder is still dropped, /readyz answers 503 naming
// the feed, the log says why at error with the file's path, and `gatehouse
// status` shows the feed without a verified release.
func TestLostStateKeepsPinnedGeneration(t *testing.T) {
	tp := newTopology(t)
	tp.stopAndTeardown(t)
	mirror := newFeedMirror(t, filepath.Join(tp.dir, "mirror"))
	mirror.publish(t, 1, "192.0.2.0/25\n2001:db8:1::/112\n")
	tp.feedOnly(t, mirror)
	tp.start(t)
	if got := tp.probe(t, cloudAddr, gateV4); got != "connected" {
		t.Fatalf("admitted source with the feed in force: %s\n%s", got, tp.d.out.String())
	}
	lkg := filepath.Join(tp.dir, "state", "feeds", "lab.lkg.json")
	tp.d.waitFor(t, "the feed release persisted", func() bool { _, err := os.Stat(lkg); return err == nil })

	for _, tc := range []struct {
		name   string
		damage func(t *testing.T)
		logs   string // in the error log line
	}{
		{"truncated last known good", func(t *testing.T) {
			b, err := os.ReadFile(lkg)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(lkg, b[:len(b)/3], 0o600); err != nil {
				t.Fatal(err)
			}
		}, lkg},
		{"state directory gone", func(t *testing.T) {
			if err := os.RemoveAll(filepath.Join(tp.dir, "state")); err != nil {
				t.Fatal(err)
			}
		}, lkg},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tp.d.kill() // SIGKILL, unless the previous case's cleanup did
			tc.damage(t)
			if err := os.Rename(mirror.dir, mirror.dir+".unreachable"); err != nil {
				t.Fatal(err)
			}
			defer os.Rename(mirror.dir+".unreachable", mirror.dir)

			tp.startUnready(t)
			// The held generation keeps serving and keeps filtering.
			if got := tp.probe(t, cloudAddr, gateV4); got != "connected" {
				t.Errorf("admitted source after the restart without state: %s, want connected (the pinned generation kept)\n%s", got, tp.d.out.String())
			}
			if got := tp.probe(t, intruderAddr, gateV4Alt); got != "dropped" {
				t.Errorf("intruder after the restart without state: %s, want dropped", got)
			}
			set := tp.dmz.Exec(t, "nft", "list", "set", "inet", "gatehouse", "admitted_v4")
			if !strings.Contains(set, "192.0.2.0/25") {
				t.Errorf("nftables admitted_v4 lost the feed's range:\n%s", set)
			}
			tp.d.waitFor(t, "the daemon to report why it is not ready", func() bool {
				code, body := tp.d.get(t, "/readyz")
				return code == http.StatusServiceUnavailable && strings.Contains(body, "feed lab has no verified release")
			})
			var errLine string
			for _, l := range strings.Split(tp.d.out.String(), "\n") {
				if strings.Contains(l, "level=ERROR") && strings.Contains(l, "previous run") && strings.Contains(l, tc.logs) {
					errLine = l
				}
			}
			if errLine == "" {
				t.Errorf("no error log line naming %s and the previous run's ranges:\n%s", tc.logs, tp.d.out.String())
			}
			out, _ := exec.Command(binary(t), "status", "-c", tp.config).CombinedOutput()
			for _, want := range []string{"NOT READY", "feed lab has no verified release", "NONE"} {
				if !strings.Contains(string(out), want) {
					t.Errorf("status lacks %q:\n%s", want, out)
				}
			}

			// The mirror back: `gatehouse feed refresh` fetches at once, the
			// release goes to every layer and the daemon is ready.
			if err := os.Rename(mirror.dir+".unreachable", mirror.dir); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(binary(t), "feed", "refresh", "lab", "-c", tp.config).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "applied serial 1") {
				t.Fatalf("feed refresh with the mirror back: %v\n%s", err, out)
			}
			if code, body := tp.d.get(t, "/readyz"); code != http.StatusOK {
				t.Errorf("/readyz after the feed came back: %d %s", code, body)
			}
			if !strings.Contains(tp.d.out.String(), "the kernel layers enforce the generation in force again") {
				t.Errorf("the log does not say the kernel layers took the new generation:\n%s", tp.d.out.String())
			}
			if got := tp.probe(t, cloudAddr, gateV4); got != "connected" {
				t.Errorf("admitted source after the feed came back: %s", got)
			}
		})
	}
}
