package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gatehouse-dmz/gatehouse/enforcer/xdp"
)

// goneInterface is an XDP filter whose interface was deleted: every check
// finds it detached and every repair fails, until back is set.
type goneInterface struct {
	repairs int
	back    bool
}

func (g *goneInterface) CheckAttached() error {
	if g.back {
		return nil
	}
	return fmt.Errorf("%w eth1", xdp.ErrDetached)
}

func (g *goneInterface) Repair() error {
	g.repairs++
	if g.back {
		return nil
	}
	return errors.New("xdp: interface eth1: route ip+net: no such network interface")
}

func (g *goneInterface) AttachMode() string { return "native" }

// TestXDPWatchBacksOff: a filter that cannot be put back (its interface is
// gone) is tried again after 1, 2, 4 … seconds, up to once a minute, not
// every second for ever; the reason is logged once; once it can be put
// back the watch is ready and tries every second again.
func TestXDPWatchBacksOff(t *testing.T) {
	var logs bytes.Buffer
	g := &goneInterface{}
	w := newXDPWatch(g, slog.New(slog.NewTextHandler(&logs, nil)))
	now := time.Unix(1e9, 0)
	w.now = func() time.Time { return now }
	var attempts []int // seconds at which a repair was attempted
	for s := 0; s < 600; s++ {
		before := g.repairs
		w.check()
		if g.repairs > before {
			attempts = append(attempts, s)
		}
		now = now.Add(xdpWatchInterval)
	}
	if len(attempts) > 20 || attempts[0] != 0 || attempts[1] != 1 || attempts[2] != 3 || attempts[3] != 7 {
		t.Errorf("repairs attempted at seconds %v, want 0, 1, 3, 7 … then once a minute", attempts)
	}
	for i := 1; i < len(attempts); i++ {
		if gap := attempts[i] - attempts[i-1]; gap > 60 {
			t.Errorf("a gap of %d s between attempts, want at most a minute", gap)
		}
	}
	if got := testutil.ToFloat64(w.repairs.WithLabelValues("error")); int(got) != len(attempts) {
		t.Errorf("reattach_total{error} = %v, want one per attempt (%d)", got, len(attempts))
	}
	if n := strings.Count(logs.String(), "level=ERROR"); n != 2 {
		t.Errorf("%d error lines in ten minutes, want 2 (found detached, not ready):\n%s", n, logs.String())
	}
	if w.notReady() == "" {
		t.Error("ready while the filter cannot be put back")
	}

	g.back = true
	for s := 0; s < 61 && w.notReady() != ""; s++ {
		w.check()
		now = now.Add(xdpWatchInterval)
	}
	if w.notReady() != "" {
		t.Errorf("not ready a minute after the interface came back: %s", w.notReady())
	}
}
