package certs

import (
	"context"
	"crypto/sha256"
	"os"
	"sort"
	"time"
)

// Watch re-reads the current generation's files (server certificates and
// keys, CA bundles, CRLs) every poll interval and reloads when any changed;
// it also rotates session-ticket keys and notices CRLs going stale. A change
// that fails to load is logged once and the old state stays in force. Watch
// returns nil when ctx ends.
func (m *Manager) Watch(ctx context.Context) error {
	t := time.NewTicker(m.poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		m.checkFiles()
		m.rotateTickets()
		m.checkStaleCRLs()
	}
}

// checkFiles reloads when any file's content differs from what the current
// generation loaded. Comparing content rather than mtimes catches
// same-second rewrites and ignores touch.
func (m *Manager) checkFiles() {
	st := m.state.Load()
	if st.policy == nil {
		return
	}
	paths := make([]string, 0, len(st.files))
	for p := range st.files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	changed := false
	all := sha256.New()
	for _, p := range paths {
		b, err := os.ReadFile(p)
		var sum [32]byte
		if err == nil {
			sum = sha256.Sum256(b)
		}
		if sum != st.files[p] {
			changed = true
		}
		all.Write([]byte(p))
		all.Write(sum[:])
	}
	if !changed {
		return
	}
	var sig [32]byte
	copy(sig[:], all.Sum(nil))
	m.mu.Lock()
	same := sig == m.failedSig
	m.mu.Unlock()
	if same {
		return
	}
	if err := m.apply(st.policy, "file change"); err != nil {
		m.mu.Lock()
		m.failedSig = sig
		m.mu.Unlock()
	}
}

// checkStaleCRLs tells the proxies when another CRL passed its nextUpdate,
// so that, with crl_stale "fail", live connections of that tenant close.
func (m *Manager) checkStaleCRLs() {
	st := m.state.Load()
	now := m.now()
	var n int32
	for _, t := range st.tenants {
		if t.crl != nil && !t.crl.NextUpdate.IsZero() && now.After(t.crl.NextUpdate) {
			n++
		}
	}
	if old := st.staleCount.Swap(n); n > old {
		m.logger.Warn("CRL past nextUpdate", "stale_crls", n)
		m.mu.Lock()
		fns := append([]func(){}, m.onChange...)
		m.mu.Unlock()
		for _, fn := range fns {
			fn()
		}
	}
}
