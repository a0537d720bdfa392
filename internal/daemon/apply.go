package daemon

import (
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// errSplit: a layer refused a generation, and a layer that had taken it
// could not be given back what it enforced before, so the layers now
// enforce different generations.
var errSplit = errors.New("layers left on different generations")

// apply hands a generation to every component in order (see applyTo).
func (d *Daemon) apply(pl plan, prev *policy.Policy) error {
	return d.applyTo(d.components, pl, prev)
}

// applyRanges applies pl.p, which differs from prev in its admitted ranges
// only, to the components that enforce them. Were anything else to differ,
// every component gets it.
func (d *Daemon) applyRanges(pl plan, prev *policy.Policy) error {
	if prev == nil || d.split.Load() || !onlyRangesDiffer(pl.p, prev) {
		// Layers left on different generations are all given this one.
		return d.apply(pl, prev)
	}
	var comps []Component
	for _, c := range d.components {
		if rb, ok := c.(RangeBlind); ok && rb.RangeBlind() {
			continue
		}
		comps = append(comps, c)
	}
	return d.applyTo(comps, pl, prev)
}

func onlyRangesDiffer(p, prev *policy.Policy) bool {
	q := *p
	q.Generation, q.Admitted = prev.Generation, prev.Admitted
	return reflect.DeepEqual(&q, prev)
}

// sameEnforcement reports whether a and b differ in their number only.
func sameEnforcement(a, b *policy.Policy) bool {
	if a == nil || b == nil {
		return a == b
	}
	q := *a
	q.Generation = b.Generation
	return reflect.DeepEqual(&q, b)
}

// applyTo hands each component what the plan gives it: pl.p, or to a
// kernel layer held on a previous run's ranges pl.held (nothing when that
// is nil, or when it is what the layer has). When one fails, those already
// updated are given back what each enforced before (the latest first), so
// that all of them keep one generation; prev == nil (the first generation)
// has nothing to give back. A layer that cannot be given its generation
// back leaves the layers split: the daemon reports itself not ready
// (/readyz) and says which layers are out of step, until a generation
// applies to every layer. A held layer leaves the hold only once it has
// taken a complete generation.
func (d *Daemon) applyTo(comps []Component, pl plan, prev *policy.Policy) error {
	h := d.hold.Load()
	type step struct {
		c      Component
		g, was *policy.Policy
	}
	var done []step
	for _, c := range comps {
		g := pl.p
		if h.holds(c.Name()) && !pl.release {
			g = pl.held
			if g == nil || sameEnforcement(g, d.inForce[c.Name()]) {
				continue
			}
		}
		start := time.Now()
		err := c.Apply(g)
		d.m.applySeconds.WithLabelValues(c.Name()).Observe(time.Since(start).Seconds())
		if err == nil {
			done = append(done, step{c, g, d.inForce[c.Name()]})
			continue
		}
		err = fmt.Errorf("apply generation %d to %s: %w", pl.p.Generation, c.Name(), err)
		if prev == nil {
			return err
		}
		var stuck, left []string
		for j := len(done) - 1; j >= 0; j-- {
			s := done[j]
			if s.was == nil {
				// Nothing of this run to give back: a held layer that
				// kept the previous run's generation as it is took the
				// complete one. It stays on it, and out of the hold.
				d.inForce[s.c.Name()] = s.g
				stuck = append(stuck, s.c.Name())
				if h.holds(s.c.Name()) {
					left = append(left, s.c.Name())
				}
				continue
			}
			if rerr := s.c.Apply(s.was); rerr != nil {
				d.inForce[s.c.Name()] = s.g
				stuck = append(stuck, s.c.Name())
				err = errors.Join(err, fmt.Errorf("restore %s: %w", s.c.Name(), rerr))
				if h.holds(s.c.Name()) && s.g == pl.p {
					left = append(left, s.c.Name())
				}
			}
		}
		if len(left) > 0 {
			d.setHold(h.without(left))
		}
		if len(stuck) > 0 {
			d.split.Store(true)
			d.log.Error("layers left on different generations; not ready until a configuration applies to all",
				"on_new_generation", stuck, "generation", pl.p.Generation, "others", prev.Generation)
			err = fmt.Errorf("%w: %w", errSplit, err)
		}
		return err
	}
	for _, s := range done {
		d.inForce[s.c.Name()] = s.g
	}
	d.split.Store(false)
	d.current.Store(pl.p)
	d.m.observePolicy(pl.p)
	if pl.release && h != nil {
		d.setHold(nil)
		d.log.Info("every feed has a verified release: the kernel layers enforce the generation in force again",
			"layers", h.layers, "generation", pl.p.Generation)
	}
	return nil
}

// setHold replaces the hold and its metrics.
func (d *Daemon) setHold(h *holdState) {
	d.hold.Store(h)
	d.m.observeHold(h, d.kernelLayers())
}

// kernelLayers names the components that can hold a previous run's state.
func (d *Daemon) kernelLayers() []string {
	var out []string
	for _, c := range d.components {
		if _, ok := c.(Holder); ok {
			out = append(out, c.Name())
		}
	}
	return out
}
