package daemon

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dmz/gatehouse/enforcer/xdp"
)

// xdpWatchInterval is how often the daemon checks that its XDP filter is
// still attached and pinned: one bpf() call and one stat, so a detached
// filter is back within about a second.
const xdpWatchInterval = time.Second

// Retries of a repair that failed back off from xdpWatchInterval up to
// maxRepairBackoff: an interface that is gone for good costs one attempt
// (one error counted) a minute, not one a second for ever.
const maxRepairBackoff = time.Minute

// attachment is what the watch needs of the XDP enforcer.
type attachment interface {
	CheckAttached() error
	Repair() error
	AttachMode() string
}

var _ attachment = (*xdp.Enforcer)(nil)

// xdpWatch notices an XDP filter detached behind the daemon's back
// (`gatehouse teardown --force`, `bpftool link detach`, the pins removed,
// the interface deleted and created again) and puts it back, as nftables
// drift repair does for the table. While it cannot, the layer is not
// ready, a new reason is logged once, and the attempts back off.
type xdpWatch struct {
	xe      attachment
	log     *slog.Logger
	repairs *prometheus.CounterVec
	now     func() time.Time

	mu       sync.Mutex
	problem  string    // why the filter is not in place, "" when it is
	failures int       // repairs failed in a row
	next     time.Time // no repair before
}

func newXDPWatch(xe attachment, log *slog.Logger) *xdpWatch {
	w := &xdpWatch{xe: xe, log: log.With("component", "xdp"), now: time.Now, repairs: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gatehouse_xdp_reattach_total",
		Help: "Times the XDP filter was found detached from its interface or unpinned and put back (ok), or could not be (error: /readyz fails meanwhile).",
	}, []string{"result"})}
	for _, r := range []string{"ok", "error"} {
		w.repairs.WithLabelValues(r)
	}
	return w
}

func (w *xdpWatch) run(ctx context.Context) error {
	t := time.NewTicker(xdpWatchInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if w.check() {
				return nil
			}
		}
	}
}

// check looks once and repairs; it reports whether the enforcer is closed.
func (w *xdpWatch) check() (closed bool) {
	err := w.xe.CheckAttached()
	if errors.Is(err, xdp.ErrClosed) {
		return true
	}
	if err == nil {
		w.mu.Lock()
		if w.problem != "" {
			w.problem, w.failures, w.next = "", 0, time.Time{}
			w.log.Info("XDP filter attached and pinned")
		}
		w.mu.Unlock()
		return false
	}
	if !errors.Is(err, xdp.ErrDetached) && !errors.Is(err, xdp.ErrUnpinned) {
		w.fail("cannot check the XDP filter: "+err.Error(), err)
		return false
	}
	w.mu.Lock()
	first, wait := w.problem == "", w.now().Before(w.next)
	w.mu.Unlock()
	if wait {
		return false
	}
	if first {
		w.log.Error("XDP filter found detached or unpinned behind the daemon's back; putting it back", "err", err)
	}
	if rerr := w.xe.Repair(); rerr != nil {
		w.repairs.WithLabelValues("error").Inc()
		w.mu.Lock()
		w.failures++
		w.next = w.now().Add(min(xdpWatchInterval<<min(w.failures-1, 16), maxRepairBackoff))
		w.mu.Unlock()
		w.fail("the XDP filter was detached and could not be put back: "+rerr.Error(), rerr)
		return errors.Is(rerr, xdp.ErrClosed)
	}
	w.repairs.WithLabelValues("ok").Inc()
	w.mu.Lock()
	w.problem, w.failures, w.next = "", 0, time.Time{}
	w.mu.Unlock()
	w.log.Warn("XDP filter attached and pinned again", "mode", w.xe.AttachMode())
	return false
}

// fail records why the layer is not ready, logging a new reason once.
func (w *xdpWatch) fail(problem string, err error) {
	w.mu.Lock()
	same := w.problem == problem
	w.problem = problem
	w.mu.Unlock()
	if !same {
		w.log.Error("XDP layer not ready", "err", err)
	}
}

func (w *xdpWatch) notReady() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.problem
}

// Describe implements prometheus.Collector.
func (w *xdpWatch) Describe(ch chan<- *prometheus.Desc) { w.repairs.Describe(ch) }

// Collect implements prometheus.Collector.
func (w *xdpWatch) Collect(ch chan<- prometheus.Metric) { w.repairs.Collect(ch) }
