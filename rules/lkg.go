package rules

import (
	"errors"
	"fmt"
	"io/fs"
	"time"
)

// loadLastKnownGood puts the feed's last known good release in force,
// verified again (an expired one is kept, flagged expired: it was in
// force) and held to the rollback floor (a release below it, or at it with
// another manifest, was put in the file's place: not used). When that file
// is missing or unusable, the release it replaced is tried, verified again
// with its expiry honoured (a superseded release past its expiry is not
// enforced again); the floor stays where it was, so a mirror replaying that
// older release is refused as a rollback rather than taken as unchanged.
// What was tried and why it failed is logged at error, with the paths, and
// kept for status.
func (m *Manager) loadLastKnownGood(f *feed) {
	name := f.cfg.Name
	log := m.log.With("feed", name)
	lkgPath, err1 := m.store.path(name, lkgSuffix)
	prevPath, err2 := m.store.path(name, prevSuffix)
	if err := errors.Join(err1, err2); err != nil {
		f.problem = err.Error()
		log.Error("feed state not loaded", "err", err)
		return
	}
	m.loadFloor(f)
	defer func() {
		// An older state directory has no floor yet (and a floor write may
		// have failed): the last known good in force raises it.
		if f.current != nil && !f.previous {
			if err := m.raiseFloor(f, f.current); err != nil {
				log.Error("rollback floor not written", "path", m.floorPath(name), "err", err)
			}
		}
	}()

	ver, lkgErr := m.loadStored(f, lkgSuffix, VerifyOptions{IgnoreExpiry: true})
	if lkgErr == nil {
		lkgErr = checkFloor(f.floor, ver.Manifest.Serial, ver.Digest, m.floorPath(name))
	}
	if lkgErr == nil {
		f.current, f.expired = ver, ver.Expired
		log.Info("last known good release loaded", "path", lkgPath, "serial", ver.Manifest.Serial,
			"prefixes", len(ver.Prefixes), "expired", ver.Expired)
		return
	}
	prev, prevErr := m.loadStored(f, prevSuffix, VerifyOptions{})
	if prevErr == nil && f.floor != nil && prev.Manifest.Serial >= f.floor.Serial {
		// The previous release lies below the floor by design; at it or
		// above, it is not the release the last known good replaced.
		prevErr = checkFloor(f.floor, prev.Manifest.Serial, prev.Digest, m.floorPath(name))
	}
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
		f.current, f.previous = prev, true
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

// carry takes over the release in force of f's feed from the manager it
// replaces, verified again under f's configuration and held to the floor;
// it reports whether that manager had one (else the store is read).
func (m *Manager) carry(f *feed, old *Manager) bool {
	if old == nil {
		return false
	}
	o, err := old.feed(f.cfg.Name)
	if err != nil {
		return false
	}
	o.mu.Lock()
	cur, previous, problem, success := o.current, o.previous, o.problem, o.lastSuccess
	o.mu.Unlock()
	if cur == nil {
		return false
	}
	m.loadFloor(f)
	ver, err := f.v.Verify(cur.Bundle, nil, VerifyOptions{IgnoreExpiry: true})
	if err == nil {
		err = checkFloor(f.floor, ver.Manifest.Serial, ver.Digest, m.floorPath(f.cfg.Name))
	}
	if err != nil {
		f.problem = fmt.Sprintf("the release in force (serial %d) does not verify under this configuration: %v", cur.Manifest.Serial, err)
		m.log.Error("feed release in force no longer verifies", "feed", f.cfg.Name, "serial", cur.Manifest.Serial, "reason", ReasonOf(err), "err", err)
		return true
	}
	f.current, f.expired, f.previous, f.lastSuccess = ver, ver.Expired, previous, success
	if previous {
		f.problem = problem
	}
	return true
}

// loadStored reads one stored release of f and verifies it again.
func (m *Manager) loadStored(f *feed, suffix string, opts VerifyOptions) (*Verified, error) {
	b, err := m.store.loadBundle(f.cfg.Name, suffix)
	if err != nil {
		return nil, err
	}
	return f.v.Verify(b, nil, opts)
}

// FeedState is what status shows of one feed (gatehouse status --json
// prints it as is).
type FeedState struct {
	Name string `json:"name"`
	// Verified: a verified release is in force (possibly expired, see
	// Expired, or the previous one, see Previous).
	Verified    bool      `json:"verified"`
	Serial      uint64    `json:"serial"`
	Expired     bool      `json:"expired"`
	LastSuccess time.Time `json:"last_success,omitzero"`
	// Previous: the release in force is the one the last known good
	// replaced, because that file was lost or unusable (Problem says why).
	Previous bool `json:"previous_release,omitempty"`
	// Problem says why there is no verified release in force, or why the
	// one in force is the previous release; empty when all is well.
	Problem string `json:"problem,omitempty"`
	// LastResult and LastError are those of the latest attempt.
	LastResult string `json:"last_result,omitempty"`
	LastError  string `json:"last_error,omitempty"`
	// Quarantined is the serial held in quarantine (0: none).
	Quarantined uint64 `json:"quarantined_serial,omitempty"`
	// Deferred is the serial of a release that verified but waits for the
	// kernel layers (ErrDeferred); 0: none.
	Deferred uint64 `json:"deferred_serial,omitempty"`
}

// States reports every configured feed, in configuration order.
func (m *Manager) States() []FeedState {
	out := make([]FeedState, 0, len(m.feeds))
	for _, f := range m.feeds {
		f.mu.Lock()
		s := FeedState{Name: f.cfg.Name, Verified: f.current != nil, Expired: f.expired, LastSuccess: f.lastSuccess,
			Previous: f.previous, Problem: f.problem, LastResult: f.lastResult, LastError: f.lastErr}
		if f.current != nil {
			s.Serial = f.current.Manifest.Serial
		} else if f.lastErr != "" {
			s.Problem += "; latest fetch: " + f.lastErr
		}
		if f.pending != nil {
			s.Quarantined = f.pending.Manifest.Serial
		}
		if f.deferred != nil {
			s.Deferred = f.deferred.Manifest.Serial
		}
		f.mu.Unlock()
		out = append(out, s)
	}
	return out
}
