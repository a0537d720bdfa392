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

// xdpWatch notices an XDP filter detached behind the daemon's back
// (`gatehouse teardown --force`, `bpftool link detach`, the pins removed)
// and puts it back, as nftables drift repair does for the table. While it
// cannot, the layer is not ready.
type xdpWatch struct {
	xe      *xdp.Enforcer
	log     *slog.Logger
	repairs *prometheus.CounterVec

	mu      sync.Mutex
	problem string // why the filter is not in place, "" when it is
}

func newXDPWatch(xe *xdp.Enforcer, log *slog.Logger) *xdpWatch {
	w := &xdpWatch{xe: xe, log: log.With("component", "xdp"), repairs: prometheus.NewCounterVec(prometheus.CounterOpts{
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
		return false
	}
	if !errors.Is(err, xdp.ErrDetached) && !errors.Is(err, xdp.ErrUnpinned) {
		w.fail("cannot check the XDP filter: "+err.Error(), err)
		return false
	}
	if w.notReady() == "" {
		w.log.Error("XDP filter found detached or unpinned behind the daemon's back; putting it back", "err", err)
	}
	if rerr := w.xe.Repair(); rerr != nil {
		w.repairs.WithLabelValues("error").Inc()
		w.fail("the XDP filter was detached and could not be put back: "+rerr.Error(), rerr)
		return errors.Is(rerr, xdp.ErrClosed)
	}
	w.repairs.WithLabelValues("ok").Inc()
	w.mu.Lock()
	w.problem = ""
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
