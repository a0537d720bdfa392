package xdp

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Run reads the blocklists every poll interval until ctx ends or the
// Enforcer is closed, and returns nil: it reports the sources the
// program's scan detection blocked (a log line and OnBlock), forgets
// expired entries, and keeps gatehouse_xdp_blocked_sources current.
func (e *Enforcer) Run(ctx context.Context) error {
	t := time.NewTicker(e.pollGap)
	defer t.Stop()
	for {
		if err := e.PollBlocked(); errors.Is(err, ErrClosed) {
			return nil
		} else if err != nil {
			e.log.Warn("reading the blocklists failed", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// PollBlocked is one round of Run.
func (e *Enforcer) PollBlocked() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return ErrClosed
	}
	now := monotonic()
	live := e.sweepLocked(now)
	e.metrics.blocked.Set(float64(len(live)))
	var fresh []blockedEntry
	seen := make(map[netip.Addr]bool, len(live))
	for _, b := range live {
		seen[b.src] = true
		if _, ok := e.known[b.src]; !ok {
			fresh = append(fresh, b)
		}
	}
	for a := range e.known {
		if !seen[a] {
			delete(e.known, a)
		}
	}
	source := e.source
	e.mu.Unlock()

	// OnBlock takes the nftables layer's lock, whose poll calls Block:
	// neither layer calls the other holding its own lock.
	var errs []error
	for _, b := range fresh {
		left := time.Duration(b.deadline - now)
		bits := source.Bits(b.src.Is6())
		if e.onBlock != nil {
			if err := e.onBlock(b.src, left); err != nil {
				errs = append(errs, fmt.Errorf("mirror block of %s: %w", netip.PrefixFrom(b.src, bits), err))
				continue
			}
		}
		e.log.Warn("scanner blocked", "source", netip.PrefixFrom(b.src, bits), "for", left.Round(time.Second))
		e.mu.Lock()
		e.known[b.src] = b.deadline
		e.mu.Unlock()
	}
	return errors.Join(errs...)
}
