package daemon

import (
	"fmt"
	"slices"
	"strings"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// complete reports whether p was built with a verified release of every
// configured feed.
func complete(p *policy.Policy) bool { return len(missingFeeds(p)) == 0 }

// Names among the admitted sources: static_ranges, and the aggregate in
// gatehouse_admitted_prefixes (config.ReservedFeedNames keeps feeds off
// them).
const (
	staticSource = "static"
	allSources   = "all"
)

// missingFeeds names the configured feeds p lacks, sorted. rules.Union
// gives every configured feed an entry in PerFeed, and a verified release
// is never empty (rules refuses an empty selection), so a feed without a
// release is one that contributes nothing.
func missingFeeds(p *policy.Policy) []string {
	var out []string
	for src, c := range p.Admitted.PerFeed {
		if src != staticSource && c.V4+c.V6 == 0 {
			out = append(out, src)
		}
	}
	slices.Sort(out)
	return out
}

// feedProblems says, per feed without a verified release in force, why.
func (d *Daemon) feedProblems() map[string]string {
	out := map[string]string{}
	if fs := d.feeds.Load(); fs != nil && fs.mgr != nil {
		for _, st := range fs.mgr.States() {
			switch {
			case st.Verified:
			case st.Deferred != 0:
				out[st.Name] = fmt.Sprintf("serial %d verified; it waits for the kernel layers", st.Deferred)
			default:
				out[st.Name] = st.Problem
			}
		}
	}
	return out
}

// enforcesRanges reports whether a kernel layer admits only p's ranges to
// the listeners: without one, an empty admitted set stops no one.
func enforcesRanges(p *policy.Policy) bool {
	return p.Enforcement.XDP != policy.XDPOff || p.Enforcement.NFTables
}

// holdsRanges reports whether kernel layers keep a previous run's admitted
// ranges that could be read back: they admit those, whatever p says.
func (d *Daemon) holdsRanges() bool {
	h := d.hold.Load()
	return h != nil && h.ranges != nil && len(h.ranges.V4)+len(h.ranges.V6) > 0
}

func (d *Daemon) heldLayers() []string {
	if h := d.hold.Load(); h != nil {
		return h.layers
	}
	return nil
}

// NotReady says why the daemon is not ready, or nothing when it is: the
// first generation is in force on every layer, every configured feed is
// backed by a verified release, and every layer is fit (an XDP filter
// detached behind the daemon's back and not put back is not).
func (d *Daemon) NotReady() []string {
	if d.stopping.Load() {
		return []string{"stopping: a stop was asked for (SIGTERM); withdrawn from BGP, draining"}
	}
	if !d.running.Load() {
		return []string{"no policy in force (starting or stopping)"}
	}
	var why []string
	if d.split.Load() {
		why = append(why, errSplit.Error()+" after a failed rollback (see the log); reload to realign")
	}
	if h := d.hold.Load(); h != nil {
		what := "as it is (its ranges cannot be read back; a reload may not change what they enforce)"
		if h.ranges != nil {
			what = fmt.Sprintf("(%d IPv4 and %d IPv6 prefixes read from %s at start), in this configuration's generation",
				len(h.ranges.V4), len(h.ranges.V6), h.from)
		}
		why = append(why, fmt.Sprintf("kernel layers %s keep the previous run's admitted ranges %s until every feed has a verified release",
			strings.Join(h.layers, ", "), what))
	}
	if p := d.current.Load(); p != nil && enforcesRanges(p) && len(p.Admitted.V4)+len(p.Admitted.V6) == 0 && !d.holdsRanges() {
		why = append(why, "nothing is admitted: no static_ranges and no feed release admit any source, so every connection to a listener is dropped")
	}
	problems := d.feedProblems()
	names := make([]string, 0, len(problems))
	for name := range problems {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		why = append(why, fmt.Sprintf("feed %s has no verified release in force (%s)", name, problems[name]))
	}
	for _, c := range d.components {
		if h, ok := c.(Health); ok {
			if s := h.NotReady(); s != "" {
				why = append(why, c.Name()+": "+s)
			}
		}
	}
	return why
}
