package xdp

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// mirrorBudget is how many blocks one poll hands to OnBlock at most: a
// forged scan blocks sources at the attacker's rate, and the nftables
// layer takes each in a netlink round trip. The rest wait for the next
// polls (and a block that expires first is never handed over).
const mirrorBudget = 1024

// logSample is how many sources a summary line names.
const logSample = 5

// Run reads the blocklists every poll interval until ctx ends or the
// Enforcer is closed, and returns nil: it reports the sources the
// program's scan detection blocked (one summary line per poll, a line per
// source at debug, and OnBlock), forgets expired entries, and keeps
// gatehouse_xdp_blocked_sources current.
func (e *Enforcer) Run(ctx context.Context) error {
	t := time.NewTicker(e.pollGap)
	defer t.Stop()
	for {
		if err := e.PollBlocked(); errors.Is(err, ErrClosed) {
			return nil
		} else if err != nil && e.mirrorLog.allow(time.Now()) {
			e.log.Warn("handing blocked sources to nftables failed; retried at the next polls", "error", err,
				"failures_not_logged", e.mirrorLog.take())
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// PollBlocked is one round of Run. Its error reports blocks OnBlock
// refused for now; they are tried again at the next polls.
func (e *Enforcer) PollBlocked() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return ErrClosed
	}
	now := monotonic()
	live := e.sweepLocked(now)
	e.metrics.blocked.Set(float64(len(live)))
	var fresh, pending []blockedEntry
	seen := make(map[netip.Addr]bool, len(live))
	for _, b := range live {
		seen[b.src] = true
		st, ok := e.known[b.src]
		if !ok {
			fresh = append(fresh, b)
			st = blockState{deadline: b.deadline}
			e.known[b.src] = st
		}
		if !st.mirrored && len(pending) < mirrorBudget {
			pending = append(pending, b)
		}
	}
	for a := range e.known {
		if !seen[a] {
			delete(e.known, a)
		}
	}
	bits := e.bits
	e.mu.Unlock()

	e.logBlocked(fresh, bits, now)
	if e.onBlock == nil {
		return nil
	}
	// OnBlock takes the nftables layer's lock: it is called without this
	// one, as nftables calls Block without its own.
	var errs []error
	for _, b := range pending {
		err := e.onBlock(b.src, time.Duration(b.deadline-now))
		switch {
		case err == nil:
			e.metrics.mirrored.WithLabelValues("ok").Inc()
		case errors.Is(err, policy.ErrBlocklistFull):
			// Final: retrying would fail alike until blocks expire
			// there. The source stays blocked here.
			e.metrics.mirrored.WithLabelValues("full").Inc()
		default:
			e.metrics.mirrored.WithLabelValues("error").Inc()
			errs = append(errs, fmt.Errorf("%s: %w", netip.PrefixFrom(b.src, bits.of(b.src)), err))
			continue
		}
		e.mu.Lock()
		if st, ok := e.known[b.src]; ok {
			st.mirrored = true
			e.known[b.src] = st
		}
		e.mu.Unlock()
	}
	if len(errs) > 3 {
		errs = append(errs[:3], fmt.Errorf("and %d more", len(errs)-3))
	}
	return errors.Join(errs...)
}

// logBlocked says which sources the program newly blocked: one line for
// the poll, naming a few, and a line per source at debug. Forged scans
// block at the attacker's rate; the log must not follow it.
func (e *Enforcer) logBlocked(fresh []blockedEntry, bits sourceBits, now uint64) {
	if len(fresh) == 0 {
		return
	}
	var sample []string
	for i, b := range fresh {
		src := netip.PrefixFrom(b.src, bits.of(b.src))
		left := time.Duration(b.deadline - now).Round(time.Second)
		if i < logSample {
			sample = append(sample, src.String())
		}
		e.log.Debug("scanner blocked", "source", src, "for", left)
	}
	e.log.Warn("scanners blocked", "count", len(fresh), "sources", sample)
}

// logLimit lets a repeating warning through once a minute and counts what
// it held back.
type logLimit struct {
	last  time.Time
	held  int
	every time.Duration
}

func (l *logLimit) allow(now time.Time) bool {
	if l.last.IsZero() || now.Sub(l.last) >= l.every {
		l.last = now
		return true
	}
	l.held++
	return false
}

// take returns how many were held back since the last allowed one.
func (l *logLimit) take() int {
	n := l.held
	l.held = 0
	return n
}
