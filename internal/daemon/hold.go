package daemon

import (
	"cmp"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"

	"github.com/gatehouse-dmz/gatehouse/internal/config"
	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/rules"
)

// HeldSet is a Holder that can read the admitted ranges it holds from a
// previous run (table inet gatehouse can; a pinned XDP generation cannot be
// read back).
type HeldSet interface {
	HeldAdmitted() (v4, v6 []netip.Prefix, err error)
}

// holdState is what the daemon knows of kernel layers kept on a previous
// run's admitted ranges (see holdPrevious). It is replaced, never changed.
type holdState struct {
	layers []string // the kernel layers held, in component order
	// ranges are the admitted ranges the previous run left, read from
	// the kernel at start (from = the layer read). The held layers are
	// given each generation of this run with these ranges (and this
	// configuration's static_ranges) instead of the feeds': so they police
	// this configuration's ports and modes, and a layer that drifts or is
	// torn down is rebuilt with them. nil: no layer could be read; the
	// held layers then keep the previous run's whole generation as it is,
	// and a reload may change nothing they enforce.
	ranges *policy.Admitted
	from   string
}

func (h *holdState) holds(name string) bool { return h != nil && slices.Contains(h.layers, name) }

// without returns h with names no longer held, or nil when none is left.
func (h *holdState) without(names []string) *holdState {
	var left []string
	for _, l := range h.layers {
		if !slices.Contains(names, l) {
			left = append(left, l)
		}
	}
	if len(left) == 0 {
		return nil
	}
	return &holdState{layers: left, ranges: h.ranges, from: h.from}
}

// holdPrevious decides, before the first generation is applied, which
// kernel layers keep what they enforce. When a feed has no verified release
// (its last-known-good file lost or damaged, and the mirror not reached
// yet), the first generation lacks that feed's ranges: applied to a kernel
// layer that still holds a previous run's filter, it would replace the
// admitted ranges that run enforced with fewer, or none, and cut off the
// tenants. Those layers keep the ranges they hold until a generation with
// every feed is applied (applyTo); meanwhile the daemon is not ready.
//
// When a layer can read what it holds (nftables), every kernel layer is
// held on those ranges, in this run's generations (see holdState); else
// the layers that hold something keep it as it is, and those that hold
// nothing (a first start) get the generation: nothing is lost.
func (d *Daemon) holdPrevious(p *policy.Policy) {
	missing := missingFeeds(p)
	if len(missing) == 0 {
		return
	}
	h := &holdState{}
	var kernel []string
	for _, c := range d.components {
		hl, ok := c.(Holder)
		if !ok {
			continue
		}
		kernel = append(kernel, c.Name())
		holds, err := hl.HoldsPrevious()
		if err != nil {
			// Unknown is kept: replacing it could only admit fewer.
			d.log.Error("cannot tell what the kernel layer holds; keeping it as it is", "layer", c.Name(), "err", err)
			holds = true
		}
		if !holds {
			continue
		}
		h.layers = append(h.layers, c.Name())
		if hs, ok := c.(HeldSet); ok && h.ranges == nil {
			v4, v6, err := hs.HeldAdmitted()
			switch {
			case err != nil:
				d.log.Error("cannot read the admitted ranges the kernel layer holds; it keeps its previous generation as it is", "layer", c.Name(), "err", err)
			case len(v4)+len(v6) > 0:
				h.ranges, h.from = &policy.Admitted{V4: v4, V6: v6}, c.Name()
			}
		}
	}
	problems := d.feedProblems()
	if len(h.layers) == 0 {
		for _, name := range missing {
			d.log.Warn("feed has no verified release yet: its ranges are not admitted; not ready until it is fetched and verified",
				"feed", name, "why", problems[name])
		}
		return
	}
	if h.ranges != nil {
		h.layers = kernel // all take the same ranges: the layers agree
	}
	for _, name := range missing {
		d.log.Error("feed has no verified release: the kernel keeps the admitted ranges of the previous run; not ready until the feed is fetched and verified",
			"feed", name, "why", problems[name], "layers", h.layers, "ranges_read_from", h.from,
			"held_v4", heldLen(h, true), "held_v6", heldLen(h, false))
	}
	d.hold.Store(h)
}

func heldLen(h *holdState, v4 bool) int {
	switch {
	case h == nil || h.ranges == nil:
		return 0
	case v4:
		return len(h.ranges.V4)
	}
	return len(h.ranges.V6)
}

// plan is what the components are given for one generation.
type plan struct {
	p *policy.Policy
	// held is what held kernel layers get instead of p: p with the ranges
	// they hold (nil: they are left as they are).
	held *policy.Policy
	// release: p has every feed, so the held layers take p and the hold
	// ends.
	release bool
}

// plan says what each layer gets for p under the hold in force.
func (d *Daemon) plan(cfg *config.Config, p *policy.Policy) (plan, error) {
	h := d.hold.Load()
	pl := plan{p: p}
	if h == nil {
		return pl, nil
	}
	if pl.release = complete(p); pl.release || h.ranges == nil {
		return pl, nil
	}
	held, err := heldGeneration(cfg, p, h)
	if err != nil {
		return pl, fmt.Errorf("generation %d for the held kernel layers: %w", p.Generation, err)
	}
	pl.held = held
	return pl, nil
}

// heldGeneration is p with the admitted ranges the held layers keep, and
// this configuration's static_ranges beside them (the admin's own words
// take effect at once; a static range removed stays admitted in the
// kernel until the hold ends, as part of the previous run's ranges).
func heldGeneration(cfg *config.Config, p *policy.Policy, h *holdState) (*policy.Policy, error) {
	adm, err := rules.Union(map[string][]netip.Prefix{
		"held":       slices.Concat(h.ranges.V4, h.ranges.V6),
		staticSource: cfg.StaticPrefixes(),
	})
	if err != nil {
		return nil, err
	}
	q := *p
	q.Admitted = adm
	if err := q.Validate(); err != nil {
		return nil, err
	}
	return &q, nil
}

// guardRelease compares the generation that would end the hold with what
// the held layers enforce. After a lost state directory nothing else stands
// between the kernel and a release the feed's guards never saw (no floor,
// no release in force to compare with): so the coverage guard applies
// here, with the strictest max_shrink and max_grow of the feeds, and a
// release that changes the admitted space beyond it is held in quarantine
// until `gatehouse feed accept`. Unknown held ranges cannot be compared.
func (d *Daemon) guardRelease(cfg *config.Config, p *policy.Policy) error {
	h := d.hold.Load()
	if h == nil || h.ranges == nil {
		return nil
	}
	held, err := heldGeneration(cfg, p, h)
	if err != nil {
		return err
	}
	shrink, grow := rules.DefaultMaxShrink, rules.DefaultMaxGrow
	for _, f := range d.feeds.Load().cfgs {
		shrink = min(shrink, cmp.Or(f.MaxShrink, rules.DefaultMaxShrink))
		grow = min(grow, cmp.Or(f.MaxGrow, rules.DefaultMaxGrow))
	}
	was := rules.CoverageOf(slices.Concat(held.Admitted.V4, held.Admitted.V6))
	next := rules.CoverageOf(slices.Concat(p.Admitted.V4, p.Admitted.V6))
	if err := rules.CheckCoverage(was, next, shrink, grow); err != nil {
		return fmt.Errorf("compared with the previous run's admitted ranges the kernel layers %s keep: %w", strings.Join(h.layers, ", "), err)
	}
	return nil
}

// kernelView is what a kernel layer enforces of a generation besides the
// admitted ranges.
type kernelView struct {
	Interface   string
	Enforcement policy.Enforcement
	Ports       []policy.Port
}

func kernelViewOf(p *policy.Policy) kernelView {
	return kernelView{Interface: p.Interface, Enforcement: p.Enforcement, Ports: p.ProtectedPorts()}
}

// refuseWhileHeldAsIs refuses a reload that would change what held kernel
// layers enforce when they keep the previous run's generation as it is
// (its ranges unreadable): a new listener would reach the proxies while
// the kernel still polices only the previous run's ports, open to any
// source in listeners mode.
func (d *Daemon) refuseWhileHeldAsIs(p *policy.Policy) error {
	h := d.hold.Load()
	if h == nil || h.ranges != nil || complete(p) {
		return nil
	}
	cur := d.current.Load()
	if reflect.DeepEqual(kernelViewOf(p), kernelViewOf(cur)) {
		return nil
	}
	return fmt.Errorf("%w: kernel layers %s keep the previous run's generation as it is (the admitted ranges they hold cannot be read back) "+
		"until feeds %s have a verified release; meanwhile a reload may not change what they enforce (listeners' ports, enforcement, interface), "+
		"or a new port would be open to any source. Fetch the feeds first (gatehouse feed refresh)",
		ErrHeld, strings.Join(h.layers, ", "), strings.Join(missingFeeds(p), ", "))
}
