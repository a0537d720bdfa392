package rules

import (
	"errors"
	"fmt"
	"io/fs"
	"time"
)

// loadLastKnownGood puts the feed's last known good release in force,
// verified again (an expired one is kept, flagged expired: it was in
// force). When that file is missing or does not verify, the release it
// replaced is tried, verified again with its expiry honoured (a superseded
// release past its expiry is not enforced again). What was tried and why
// it failed is logged at error, with the paths, and kept for status.
func (m *Manager) loadLastKnownGood(f *feed) {
	name := f.cfg.Name
	log := m.log.With("feed", name)
	lkgPath, _ := m.store.path(name, lkgSuffix)
	prevPath, _ := m.store.path(name, prevSuffix)

	ver, lkgErr := m.loadStored(f, lkgSuffix, VerifyOptions{IgnoreExpiry: true})
	if lkgErr == nil {
		f.current, f.expired = ver, ver.Expired
		log.Info("last known good release loaded", "path", lkgPath, "serial", ver.Manifest.Serial,
			"prefixes", len(ver.Prefixes), "expired", ver.Expired)
		return
	}
	prev, prevErr := m.loadStored(f, prevSuffix, VerifyOptions{})
	lkgMissing, prevMissing := errors.Is(lkgErr, fs.ErrNotExist), errors.Is(prevErr, fs.ErrNotExist)
	if lkgMissing && prevMissing {
		// A first start, or a lost state_dir: the daemon, which sees what
		// the kernel still holds, says which.
		f.problem = "no last known good release in " + lkgPath
		log.Info("no last known good release yet", "path", lkgPath)
		return
	}
	if !lkgMissing {
		log.Error("last known good release unusable", "path", lkgPath, "reason", ReasonOf(lkgErr), "err", lkgErr)
	}
	if prevErr == nil {
		f.current = prev
		f.problem = fmt.Sprintf("last known good %s: %v; in force: the previous release (serial %d) from %s",
			lkgPath, lkgErr, prev.Manifest.Serial, prevPath)
		log.Warn("falling back to the previous release", "path", prevPath, "serial", prev.Manifest.Serial,
			"prefixes", len(prev.Prefixes), "expires", prev.Manifest.Expires.UTC().Format(time.RFC3339))
		return
	}
	if !prevMissing {
		log.Error("previous release unusable too", "path", prevPath, "reason", ReasonOf(prevErr), "err", prevErr)
	}
	f.problem = fmt.Sprintf("last known good %s: %v; previous %s: %v", lkgPath, lkgErr, prevPath, prevErr)
}

// loadStored reads one stored release of f and verifies it again.
func (m *Manager) loadStored(f *feed, suffix string, opts VerifyOptions) (*Verified, error) {
	b, err := m.store.loadBundle(f.cfg.Name, suffix)
	if err != nil {
		return nil, err
	}
	return f.v.Verify(b, nil, opts)
}

// FeedState is what status shows of one feed.
type FeedState struct {
	Name string
	// Verified: a verified release is in force (possibly expired, see
	// Expired, or the previous one, see Problem).
	Verified    bool
	Serial      uint64
	Expired     bool
	LastSuccess time.Time
	// Problem says why there is no verified release in force, or why the
	// one in force is the previous release; empty when all is well.
	Problem string
	// LastResult and LastError are those of the latest attempt.
	LastResult, LastError string
	// Quarantined is the serial held in quarantine (0: none).
	Quarantined uint64
}

// States reports every configured feed, in configuration order.
func (m *Manager) States() []FeedState {
	out := make([]FeedState, 0, len(m.feeds))
	for _, f := range m.feeds {
		f.mu.Lock()
		s := FeedState{Name: f.cfg.Name, Verified: f.current != nil, Expired: f.expired, LastSuccess: f.lastSuccess,
			Problem: f.problem, LastResult: f.lastResult, LastError: f.lastErr}
		if f.current != nil {
			s.Serial = f.current.Manifest.Serial
		} else if f.lastErr != "" {
			s.Problem += "; latest fetch: " + f.lastErr
		}
		if f.pending != nil {
			s.Quarantined = f.pending.Manifest.Serial
		}
		f.mu.Unlock()
		out = append(out, s)
	}
	return out
}
