package daemon

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"aead.dev/minisign"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/rules"
)

// reader is a held kernel layer that can read back the admitted ranges it
// holds, as nftables does.
type reader struct {
	*recorder
	v4 []netip.Prefix
}

func (reader) HoldsPrevious() (bool, error)                            { return true, nil }
func (r reader) HeldAdmitted() ([]netip.Prefix, []netip.Prefix, error) { return r.v4, nil, nil }

// cycle runs one round of feed name through the daemon, as its loop would.
func cycle(d *Daemon, name string) error {
	fs := d.feeds.Load()
	return fs.mgr.Cycle(context.Background(), name, func(up rules.Update) error { return d.onFeedUpdate(fs.mgr, up) })
}

// addListener appends a second listener on port to the configuration.
func addListener(t *testing.T, path, port string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	web := regexp.MustCompile(`(?m)^  - \{name: web, listen: "127.0.0.1:1443"`)
	cfg := web.ReplaceAllString(string(b), `  - {name: web2, listen: "127.0.0.1:`+port+`", protocol: https, server_cert: `+
		filepath.Dir(path)+`/server.pem, server_key: `+filepath.Dir(path)+`/server.key, routes: [{tenant: acme, backend: "http://127.0.0.1:1"}]}
$0`)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
}

func ports(p *policy.Policy) []uint16 {
	var out []uint16
	for _, pt := range p.ProtectedPorts() {
		out = append(out, pt.Num)
	}
	return out
}

// TestHeldLayersTakeReloadWithHeldRanges: kernel layers held on ranges
// read back from the kernel are given every generation of this run with
// those ranges: the first one, and a reload that adds a listener, so the
// new port is policed (with the held ranges) as soon as the proxies open
// it. They never get the generation that lacks the feed.
func TestHeldLayersTakeReloadWithHeldRanges(t *testing.T) {
	path, _, _ := feedConfigUnreachable(t)
	held := prefixesOf("198.51.100.0/24")
	xdp, nft := holder{&recorder{name: "xdp"}}, reader{&recorder{name: "nftables"}, held}
	proxy := blind{&recorder{name: "proxy"}}
	d := runDaemon(t, path, xdp, nft, proxy)
	waitFor(t, "the first generation", func() bool { return proxy.last() != 0 })
	for _, l := range []*recorder{xdp.recorder, nft.recorder} {
		p := l.lastPolicy()
		if p == nil || !p.Admitted.Contains(mustAddr("198.51.100.7")) || !p.Admitted.Contains(mustAddr("203.0.113.1")) {
			t.Fatalf("%s at start: %+v, want the held ranges and static_ranges", l.name, p)
		}
	}
	if d.Policy().Admitted.Contains(mustAddr("198.51.100.7")) {
		t.Fatal("the generation in force admits the feed it lacks")
	}
	if st := d.Status(); !slices.Equal(st.Held, []string{"xdp", "nftables"}) || st.HeldAdmitted == nil || st.HeldAdmitted.V4 != 1 {
		t.Errorf("status held: %v %+v", st.Held, st.HeldAdmitted)
	}

	addListener(t, path, "1444")
	if err := d.Reload(); err != nil {
		t.Fatalf("reload adding a listener while held: %v", err)
	}
	for _, l := range []*recorder{xdp.recorder, nft.recorder, proxy.recorder} {
		p := l.lastPolicy()
		if !slices.Contains(ports(p), 1444) {
			t.Errorf("%s after the reload polices ports %v, want 1444 among them", l.name, ports(p))
		}
	}
	for _, l := range []*recorder{xdp.recorder, nft.recorder} {
		if !l.lastPolicy().Admitted.Contains(mustAddr("198.51.100.7")) {
			t.Errorf("%s after the reload lost the held ranges", l.name)
		}
	}
}

// TestReloadRefusedWhileHeldAsIs: a held kernel layer whose ranges cannot
// be read keeps the previous run's generation as it is: a reload that
// would change what it enforces (a new listener port) is refused, naming
// the feed; one that changes static_ranges only goes through.
func TestReloadRefusedWhileHeldAsIs(t *testing.T) {
	path, metrics, _ := feedConfigUnreachable(t)
	xdp, proxy := holder{&recorder{name: "xdp"}}, blind{&recorder{name: "proxy"}}
	d := runDaemon(t, path, xdp, proxy)
	waitFor(t, "the first generation", func() bool { return proxy.last() != 0 })
	before := proxy.last()
	good, _ := os.ReadFile(path)

	addListener(t, path, "1444")
	err := d.Reload()
	if !errors.Is(err, ErrHeld) || !strings.Contains(err.Error(), "lab") || !strings.Contains(err.Error(), "xdp") {
		t.Fatalf("reload adding a listener while xdp is held as it is: %v, want ErrHeld naming the layer and the feed", err)
	}
	if proxy.last() != before || xdp.last() != 0 {
		t.Errorf("a refused reload reached a layer: proxy %d, xdp %d", proxy.last(), xdp.last())
	}

	if err := os.WriteFile(path, []byte(strings.Replace(string(good), "static_ranges: [203.0.113.0/24]", "static_ranges: [203.0.113.0/25]", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.Reload(); err != nil {
		t.Errorf("reload of static_ranges while held: %v", err)
	}
	if code, body := readyz(t, metrics); !strings.Contains(body, "kernel layers xdp keep the previous run's admitted ranges as it is") {
		t.Errorf("/readyz: %d %q", code, body)
	}
}

// TestReleaseFailureKeepsHeldLayersOffIncomplete: the generation with
// every feed is taken by xdp and refused by nftables. xdp, which kept the
// previous run's generation as it was, is never given the generation that
// lacks the feed: it stays on the complete one and leaves the hold, the
// layers are reported split, and nftables stays held. When nftables takes
// it, all agree and the daemon is ready.
func TestReleaseFailureKeepsHeldLayersOffIncomplete(t *testing.T) {
	path, metrics, feedDir := feedConfigUnreachable(t)
	var refuse atomic.Bool
	refuse.Store(true)
	xdp := holder{&recorder{name: "xdp"}}
	nft := holder{&recorder{name: "nftables", refuse: func(p *policy.Policy) bool { return refuse.Load() && complete(p) }}}
	proxy := blind{&recorder{name: "proxy"}}
	d := runDaemon(t, path, xdp, nft, proxy)
	waitFor(t, "the first generation", func() bool { return proxy.last() != 0 })
	incomplete := d.current.Load().Generation

	if err := os.Rename(feedDir+".gone", feedDir); err != nil {
		t.Fatal(err)
	}
	if err := cycle(d, "lab"); rules.ReasonOf(err) != rules.ReasonApply {
		t.Fatalf("release refused by nftables: %v", err)
	}
	xdp.mu.Lock()
	seen := slices.Clone(xdp.seen)
	xdp.mu.Unlock()
	if slices.Contains(seen, incomplete) || len(seen) != 1 || !xdp.lastPolicy().Admitted.Contains(mustAddr("198.51.100.7")) {
		t.Errorf("xdp saw %v (the incomplete generation is %d), want only the complete one", seen, incomplete)
	}
	if held := d.heldLayers(); !slices.Equal(held, []string{"nftables"}) {
		t.Errorf("held after the failed release: %v, want nftables only", held)
	}
	if _, body := readyz(t, metrics); !strings.Contains(body, "layers left on different generations") ||
		!strings.Contains(body, "kernel layers nftables keep") {
		t.Errorf("/readyz after the failed release: %q", body)
	}

	refuse.Store(false)
	if err := cycle(d, "lab"); err != nil {
		t.Fatal(err)
	}
	if g := d.Policy().Generation; nft.last() != g || xdp.last() != g || d.hold.Load() != nil || d.split.Load() {
		t.Errorf("after nftables took it: xdp %d, nftables %d, daemon %d, held %v, split %v", xdp.last(), nft.last(), g, d.heldLayers(), d.split.Load())
	}
	if code, body := readyz(t, metrics); code != 200 {
		t.Errorf("/readyz: %d %q", code, body)
	}
}

// TestReleaseFailureRollsHeldLayerBackToHeldRanges: with the held ranges
// known, a layer that took the complete generation while another refused
// it is given back its held generation, and both stay held.
func TestReleaseFailureRollsHeldLayerBackToHeldRanges(t *testing.T) {
	path, _, feedDir := feedConfigUnreachable(t)
	xdp := holder{&recorder{name: "xdp"}}
	withFeed := func(p *policy.Policy) bool { return p.Admitted.PerFeed["lab"].V4 > 0 }
	nft := reader{&recorder{name: "nftables", refuse: withFeed}, prefixesOf("198.51.100.0/24")}
	d := runDaemon(t, path, xdp, nft, blind{&recorder{name: "proxy"}})
	waitFor(t, "the held generation", func() bool { return xdp.last() != 0 })
	heldGen := xdp.lastPolicy()

	os.Rename(feedDir+".gone", feedDir)
	if err := cycle(d, "lab"); rules.ReasonOf(err) != rules.ReasonApply {
		t.Fatalf("release refused by nftables: %v", err)
	}
	if got := xdp.lastPolicy(); got != heldGen {
		t.Errorf("xdp after the failed release: generation %d admitting %v, want its held generation back", got.Generation, got.Admitted.V4)
	}
	if held := d.heldLayers(); len(held) != 2 || d.split.Load() {
		t.Errorf("held %v split %v, want both held, not split", held, d.split.Load())
	}
}

// TestReleaseGuardedAgainstHeldRanges: after a lost state directory no
// floor and no release in force guard the first release; the generation
// that would end the hold is compared with the ranges the kernel keeps. A
// release that loses a third of the admitted space is held in quarantine
// (the kernel keeps the previous run's ranges); once the admin accepts it,
// it ends the hold.
func TestReleaseGuardedAgainstHeldRanges(t *testing.T) {
	path, _, feedDir := feedConfigUnreachable(t)
	// The previous run admitted the feed and another /24.
	nft := reader{&recorder{name: "nftables"}, prefixesOf("192.0.2.0/24", "198.51.100.0/24")}
	d := runDaemon(t, path, nft, blind{&recorder{name: "proxy"}})
	waitFor(t, "the held generation", func() bool { return nft.last() != 0 })

	os.Rename(feedDir+".gone", feedDir)
	if err := cycle(d, "lab"); rules.ReasonOf(err) != rules.ReasonQuarantined || !strings.Contains(err.Error(), "previous run") {
		t.Fatalf("a release shrinking what the kernel keeps by a third: %v, want quarantined", err)
	}
	if d.hold.Load() == nil || !nft.lastPolicy().Admitted.Contains(mustAddr("192.0.2.1")) {
		t.Fatalf("the hold ended on a quarantined release")
	}
	if st := d.feeds.Load().mgr.States()[0]; st.Quarantined != 100 {
		t.Errorf("feed state: %+v, want serial 100 in quarantine", st)
	}
	if err := d.feeds.Load().mgr.Accept("lab"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the accepted release to end the hold", func() bool { return d.hold.Load() == nil })
	if p := nft.lastPolicy(); p.Generation != d.Policy().Generation || p.Admitted.Contains(mustAddr("192.0.2.1")) ||
		!p.Admitted.Contains(mustAddr("198.51.100.7")) {
		t.Errorf("nftables after the accepted release: %v", p.Admitted.V4)
	}
}

// TestReleaseDeferredWhileHeld: while a feed lacks a release and kernel
// layers keep the previous run's ranges, another feed's new release
// reaches the other layers but not the kernel: it is not committed as
// last known good (a restart would not pretend it was in force), status
// shows it deferred, and the metrics say which layers are held. Once the
// missing feed comes, both are in force and committed.
func TestReleaseDeferredWhileHeld(t *testing.T) {
	path, metrics, feedDir := feedConfigUnreachable(t)
	// A second feed, lab2, reachable, signed with its own key.
	pub2, key2, err := minisign.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	dir2 := t.TempDir()
	writeReleaseNamed(t, dir2, "lab2", key2, 7, "192.0.2.0/24")
	b, _ := os.ReadFile(path)
	cfg := strings.Replace(string(b), "\nrules:", "\n  - {name: lab2, source: \"file://"+dir2+"/manifest.json\", format: cidr, minisign_keys: [\""+
		pub2.String()+"\"], threshold: 1, refresh: 1h}\nrules:", 1)
	cfg = strings.Replace(cfg, "reserved_exempt: [198.51.100.0/24]", "reserved_exempt: [198.51.100.0/24, 192.0.2.0/24]", 1)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	nft := reader{&recorder{name: "nftables"}, prefixesOf("198.51.100.0/24", "192.0.2.0/24")}
	d := runDaemon(t, path, nft, blind{&recorder{name: "proxy"}})
	state := regexp.MustCompile(`state_dir: (\S+)`).FindStringSubmatch(cfg)[1]
	lkg2 := filepath.Join(state, "feeds", "lab2.lkg.json")

	waitFor(t, "lab2's release deferred", func() bool { return d.feeds.Load().mgr.States()[1].Deferred == 7 })
	if _, err := os.Stat(lkg2); err == nil {
		t.Error("a release the kernel did not take was saved as last known good")
	}
	if !d.Policy().Admitted.Contains(mustAddr("192.0.2.1")) || d.hold.Load() == nil {
		t.Error("the generation in force lacks lab2's release, or the hold ended")
	}
	st := d.Status()
	if st.Feeds[1].Verified || st.Feeds[1].Deferred != 7 {
		t.Errorf("status of lab2: %+v", st.Feeds[1])
	}
	_, body := scrape(t, metrics)
	for _, want := range []string{`gatehouse_kernel_layer_held{layer="nftables"} 1`, `gatehouse_held_admitted_prefixes{family="ipv4"} 2`,
		`gatehouse_feed_updates_total{feed="lab2",result="deferred"} 1`} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("metrics lack %s", want)
		}
	}

	os.Rename(feedDir+".gone", feedDir)
	if err := cycle(d, "lab"); err != nil {
		t.Fatal(err)
	}
	if d.hold.Load() != nil || nft.last() != d.Policy().Generation {
		t.Fatalf("the hold did not end with every feed")
	}
	if _, err := os.Stat(lkg2); err != nil {
		t.Errorf("lab2's release was not committed once in force: %v", err)
	}
	if st := d.feeds.Load().mgr.States()[1]; !st.Verified || st.Serial != 7 || st.Deferred != 0 {
		t.Errorf("lab2 after the hold: %+v", st)
	}
	if _, body := scrape(t, metrics); !strings.Contains(body, `gatehouse_kernel_layer_held{layer="nftables"} 0`+"\n") {
		t.Error("gatehouse_kernel_layer_held stays 1 after the hold")
	}
}

// TestReloadKeepsFeedWhoseReleaseNoLongerVerifies: a reload that rotates
// the feed's minisign key before the mirror is signed with it would make
// the release in force fail verification and drop the feed's ranges from
// every layer. It is refused, naming the feed and why; the kernel keeps
// the feed.
func TestReloadKeepsFeedWhoseReleaseNoLongerVerifies(t *testing.T) {
	path, _, _ := feedConfig(t)
	kernel := holder{&recorder{name: "xdp"}}
	d := runDaemon(t, path, kernel)
	b, _ := os.ReadFile(path)
	lkg := filepath.Join(regexp.MustCompile(`state_dir: (\S+)`).FindStringSubmatch(string(b))[1], "feeds", "lab.lkg.json")
	waitFor(t, "the feed in force and saved", func() bool {
		p := d.Policy()
		_, err := os.Stat(lkg)
		return p != nil && p.Admitted.Contains(mustAddr("198.51.100.7")) && kernel.last() == p.Generation && err == nil
	})
	gen := kernel.last()
	newPub, _, err := minisign.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	rotated := regexp.MustCompile(`minisign_keys: \["[^"]+"\]`).ReplaceAllString(string(b), `minisign_keys: ["`+newPub.String()+`"]`)
	if err := os.WriteFile(path, []byte(rotated), 0o600); err != nil {
		t.Fatal(err)
	}
	err = d.Reload()
	if err == nil || !strings.Contains(err.Error(), "feed lab") || !strings.Contains(err.Error(), "bad_signature") {
		t.Fatalf("reload rotating the key before the mirror: %v, want a refusal naming feed lab and why", err)
	}
	if kernel.last() != gen || !d.Policy().Admitted.Contains(mustAddr("198.51.100.7")) {
		t.Errorf("after the refused reload: kernel at %d (was %d), feed admitted %v", kernel.last(), gen, d.Policy().Admitted.Contains(mustAddr("198.51.100.7")))
	}
}

func prefixesOf(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}
