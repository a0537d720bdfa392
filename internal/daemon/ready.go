package daemon

import (
	"fmt"
	"slices"
	"strings"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// complete reports whether p was built with a verified release of every
// configured feed. rules.Union gives every configured feed an entry in
// PerFeed, and a verified release is never empty (rules refuses an empty
// selection), so a feed without a release is one that contributes nothing.
func complete(p *policy.Policy) bool {
	for src, c := range p.Admitted.PerFeed {
		if src != staticSource && c.V4+c.V6 == 0 {
			return false
		}
	}
	return true
}

// Names among the admitted sources: static_ranges, and the aggregate in
// gatehouse_admitted_prefixes.
const (
	staticSource = "static"
	allSources   = "all"
)

// missingFeeds names the configured feeds p lacks, sorted.
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

// holdPrevious decides, before the first generation is applied, which
// kernel layers keep what they enforce. When a feed has no verified release
// (its last-known-good file lost or damaged, and the mirror not reached
// yet), the first generation lacks that feed's ranges: applied to a kernel
// layer that still holds a previous run's filter, it would replace the
// admitted ranges that run enforced with fewer, or none, and cut off the
// tenants. Those layers keep what they hold until a generation with every
// feed is applied (applyTo); meanwhile the daemon is not ready. Layers that
// hold nothing (a first start) get the generation: nothing is lost.
func (d *Daemon) holdPrevious(p *policy.Policy) {
	missing := missingFeeds(p)
	if len(missing) == 0 {
		return
	}
	var held []string
	for _, c := range d.components {
		h, ok := c.(Holder)
		if !ok {
			continue
		}
		holds, err := h.HoldsPrevious()
		if err != nil {
			// Unknown is kept: replacing it could only admit fewer.
			d.log.Error("cannot tell what the kernel layer holds; keeping it as it is", "layer", c.Name(), "err", err)
			holds = true
		}
		if holds {
			held = append(held, c.Name())
		}
	}
	problems := d.feedProblems()
	for _, name := range missing {
		if len(held) > 0 {
			d.log.Error("feed has no verified release: the kernel keeps the admitted ranges of the previous run; not ready until the feed is fetched and verified",
				"feed", name, "why", problems[name], "layers", held)
		} else {
			d.log.Warn("feed has no verified release yet: its ranges are not admitted; not ready until it is fetched and verified",
				"feed", name, "why", problems[name])
		}
	}
	if len(held) > 0 {
		d.held.Store(&held)
	}
}

// feedProblems says, per feed without a verified release, why.
func (d *Daemon) feedProblems() map[string]string {
	out := map[string]string{}
	if fs := d.feeds.Load(); fs != nil && fs.mgr != nil {
		for _, st := range fs.mgr.States() {
			if !st.Verified {
				out[st.Name] = st.Problem
			}
		}
	}
	return out
}

func (d *Daemon) heldLayers() []string {
	if h := d.held.Load(); h != nil {
		return *h
	}
	return nil
}

func without(comps []Component, names []string) []Component {
	var out []Component
	for _, c := range comps {
		if !slices.Contains(names, c.Name()) {
			out = append(out, c)
		}
	}
	return out
}

// NotReady says why the daemon is not ready, or nothing when it is: the
// first generation is in force on every layer, every configured feed is
// backed by a verified release, and every layer is fit (an XDP filter
// detached behind the daemon's back and not put back is not).
func (d *Daemon) NotReady() []string {
	if !d.running.Load() {
		return []string{"no policy in force (starting or stopping)"}
	}
	var why []string
	if d.split.Load() {
		why = append(why, errSplit.Error()+" after a failed rollback (see the log); reload to realign")
	}
	if held := d.heldLayers(); len(held) > 0 {
		why = append(why, fmt.Sprintf("kernel layers %s keep the previous run's admitted ranges until every feed has a verified release", strings.Join(held, ", ")))
	}
	problems := d.feedProblems()
	names := make([]string, 0, len(problems))
	for name := range problems {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		why = append(why, fmt.Sprintf("feed %s has no verified release (%s)", name, problems[name]))
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
