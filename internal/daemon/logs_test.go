package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/internal/testkit"
	"github.com/gatehouse-dmz/gatehouse/policy"
)

// logsFrom is what buf received after mark: the lines at info and above,
// and those at debug.
func logsFrom(buf *testkit.LogBuffer, mark int) (info, debug []string) {
	for _, line := range strings.Split(buf.String()[mark:], "\n") {
		switch {
		case line == "":
		case strings.Contains(line, " level=DEBUG "):
			debug = append(debug, line)
		default:
			info = append(info, line)
		}
	}
	return info, debug
}

// runDaemonLogged is runDaemon with the daemon's log, debug included, in buf.
func runDaemonLogged(t *testing.T, path string, buf *testkit.LogBuffer, comps ...Component) *Daemon {
	t.Helper()
	log := slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	d, err := New(Options{ConfigPath: path, Logger: log, Build: func(*Env) ([]Component, error) { return comps, nil }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return d
}

// TestFeedEventLoggedOnce: a feed release the layers take is one line at
// info (the feed manager's; the layers' and the daemon's details are at
// debug), and a release a layer refuses is one line too, whose error says
// once which layer refused which generation.
func TestFeedEventLoggedOnce(t *testing.T) {
	path, key, feedDir := feedConfig(t)
	var refuse atomic.Bool
	xdp := &recorder{name: "xdp", refuse: func(*policy.Policy) bool { return refuse.Load() }}
	nft := &recorder{name: "nftables"}
	buf := &testkit.LogBuffer{}
	d := runDaemonLogged(t, path, buf, xdp, nft, blind{&recorder{name: "proxy"}})
	waitFor(t, "the first release in force", func() bool { return buf.Count("feed update applied") == 1 })

	mark := len(buf.String())
	writeRelease(t, feedDir, key, 101, "198.51.100.0/24\n")
	if err := cycle(d, "lab"); err != nil {
		t.Fatalf("release 101: %v", err)
	}
	info, debug := logsFrom(buf, mark)
	if len(info) != 1 || !strings.Contains(info[0], `msg="feed update applied"`) || !strings.Contains(info[0], "serial=101") {
		t.Errorf("a release applied: %d lines at info, want the feed manager's one:\n%s", len(info), strings.Join(info, "\n"))
	}
	gen := d.Policy().Generation
	if !strings.Contains(strings.Join(debug, "\n"), `msg="policy applied"`) || !strings.Contains(strings.Join(debug, "\n"), fmt.Sprintf("serial=101 generation=%d", gen)) {
		t.Errorf("no debug line with the generation applied:\n%s", strings.Join(debug, "\n"))
	}

	mark = len(buf.String())
	refuse.Store(true)
	writeRelease(t, feedDir, key, 102, "198.51.100.0/25\n198.51.100.128/26\n198.51.100.192/27\n")
	err := cycle(d, "lab")
	want := fmt.Sprintf("apply_failed: apply generation %d to xdp: xdp refuses generation %d", gen+1, gen+1)
	if err == nil || err.Error() != want {
		t.Errorf("release 102 refused by a layer: %v, want %q", err, want)
	}
	info, _ = logsFrom(buf, mark)
	// A kernel layer that refuses a generation leaves the admitted ranges
	// stale: an error an admin alerts on, as a refused reload is.
	if len(info) != 1 || !strings.Contains(info[0], ` level=ERROR msg="feed update not applied; last known good stays in force"`) ||
		!strings.Contains(info[0], fmt.Sprintf("reason=apply_failed err=%q", strings.TrimPrefix(want, "apply_failed: "))) {
		t.Errorf("a release a layer refused: %d lines at info and above, want the feed manager's one with the error:\n%s",
			len(info), strings.Join(info, "\n"))
	}
	if d.Policy().Generation != gen {
		t.Errorf("generation %d in force after the refusal, want %d", d.Policy().Generation, gen)
	}
}

// TestHeldReleaseQuarantineLoggedOnce: a release that would end a hold
// with a change beyond the coverage guard is quarantined, said once by the
// feed manager with the daemon's reason.
func TestHeldReleaseQuarantineLoggedOnce(t *testing.T) {
	path, _, feedDir := feedConfigUnreachable(t)
	nft := reader{&recorder{name: "nftables"}, prefixesOf("192.0.2.0/24", "198.51.100.0/24")}
	buf := &testkit.LogBuffer{}
	d := runDaemonLogged(t, path, buf, nft, blind{&recorder{name: "proxy"}})
	waitFor(t, "the held generation", func() bool { return nft.last() != 0 })
	waitFor(t, "the first round refused", func() bool { return d.feeds.Load().mgr.States()[0].LastResult != "" })

	mark := len(buf.String())
	if err := os.Rename(feedDir+".gone", feedDir); err != nil {
		t.Fatal(err)
	}
	if err := cycle(d, "lab"); err == nil {
		t.Fatal("a release shrinking what the kernel keeps by a third was applied")
	}
	info, _ := logsFrom(buf, mark)
	if len(info) != 1 || !strings.Contains(info[0], "feed update held in quarantine") || !strings.Contains(info[0], "previous run's admitted ranges the kernel layers nftables keep") {
		t.Errorf("a quarantined release: %d lines at info and above, want the feed manager's one with the reason:\n%s",
			len(info), strings.Join(info, "\n"))
	}
}
