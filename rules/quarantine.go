package rules

import (
	"fmt"
	"time"
)

// Accept lets the release of feed name held in quarantine through on the
// feed's next cycle (Run wakes it at once). The acceptance is recorded in
// the store, so `gatehouse feed accept` run beside the daemon does the
// same.
func (m *Manager) Accept(name string) error {
	f, err := m.feed(name)
	if err != nil {
		return err
	}
	f.mu.Lock()
	p := f.pending
	f.mu.Unlock()
	if p == nil {
		return fmt.Errorf("feed %s: %w", name, ErrNothingQuarantined)
	}
	if !m.now().Before(p.Manifest.Expires) {
		return fmt.Errorf("feed %s: %w", name, refuse(ReasonExpired, "release %d in quarantine expired at %s",
			p.Manifest.Serial, p.Manifest.Expires.UTC().Format(time.RFC3339)))
	}
	if err := m.store.WriteAccept(name, p.Digest); err != nil {
		return err
	}
	select {
	case f.wake <- struct{}{}:
	default:
	}
	return nil
}

func (m *Manager) quarantine(f *feed, ver *Verified) {
	f.mu.Lock()
	same := f.pending != nil && f.pending.Digest == ver.Digest
	f.pending = ver
	f.mu.Unlock()
	if same {
		return
	}
	if err := m.store.SaveQuarantine(f.cfg.Name, ver.Manifest.Serial, ver.Bundle); err != nil {
		m.log.Warn("cannot record quarantined release", "feed", f.cfg.Name, "err", err)
	}
}

// acceptPending applies the quarantined release when the store records
// its acceptance; it reports whether it tried.
func (m *Manager) acceptPending(f *feed, onUpdate ApplyFunc) bool {
	f.cycleMu.Lock() // not beside a round of the same feed (see cycle)
	defer f.cycleMu.Unlock()
	f.mu.Lock()
	p, cur, floor := f.pending, f.current, f.floor
	f.mu.Unlock()
	if p == nil {
		return false
	}
	d, ok, err := m.store.ReadAccept(f.cfg.Name)
	if err != nil || !ok || d != p.Digest {
		return false
	}
	if !m.now().Before(p.Manifest.Expires) {
		// Consent covers the release as it was; once expired it is not
		// applied (a fresh fetch would refuse it too).
		f.mu.Lock()
		if f.pending == p {
			f.pending = nil
		}
		f.mu.Unlock()
		_ = m.store.ClearQuarantine(f.cfg.Name)
		m.count(f, string(ReasonExpired))
		m.log.Warn("accepted feed release expired in quarantine; discarded, the release in force stays",
			"feed", f.cfg.Name, "serial", p.Manifest.Serial, "expired_at", p.Manifest.Expires)
		return false
	}
	if cur != nil && p.Manifest.Serial <= cur.Manifest.Serial || checkFloor(floor, p.Manifest.Serial, p.Digest, "") != nil {
		f.mu.Lock()
		f.pending = nil
		f.mu.Unlock()
		_ = m.store.ClearQuarantine(f.cfg.Name)
		return false
	}
	_ = m.apply(f, p, ResultAccepted, onUpdate)
	return true
}
