package certs

import (
	"context"
	"crypto/sha256"
	"sort"
	"time"
)

// Watch re-reads the current generation's files (server certificates and
// keys, CA bundles, CRLs) every poll interval and reloads once a change has
// held still for one more poll;
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
// generation loaded. Files whose size and mtime are unchanged are not read;
// the others are compared by content, so touch alone reloads nothing.
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
		was := st.files[p]
		var sum [32]byte
		if fi, err := m.files.Stat(p); err == nil && fi.Size() == was.size && fi.ModTime().Equal(was.mtime) {
			sum = was.sum
		} else if b, err := m.files.ReadFile(p); err == nil {
			sum = sha256.Sum256(b)
		}
		if sum != was.sum {
			changed = true
		}
		all.Write([]byte(p))
		all.Write(sum[:])
	}
	if !changed {
		// Back to what is loaded: forget earlier failures, so that the
		// same bad change made again is reported again.
		m.mu.Lock()
		m.failedSig, m.pendingSig = [32]byte{}, [32]byte{}
		m.mu.Unlock()
		return
	}
	var sig [32]byte
	copy(sig[:], all.Sum(nil))
	m.mu.Lock()
	failed := sig == m.failedSig
	// Wait until the files have been the same for two polls: a certificate
	// and its key are written one after the other, and loading in between
	// would only log a mismatch.
	settled := sig == m.pendingSig
	m.pendingSig = sig
	m.mu.Unlock()
	if failed || !settled {
		return
	}
	if err := m.apply(st.policy, "file change"); err != nil {
		m.mu.Lock()
		m.failedSig = sig
		m.mu.Unlock()
	}
}

// checkStaleCRLs tells the proxies when another CRL passed its nextUpdate,
// so that, with tls.crl_stale fail, live connections of that tenant close.
func (m *Manager) checkStaleCRLs() {
	st := m.state.Load()
	now := m.now()
	var n int32
	for _, t := range st.tenants {
		for _, c := range t.crls {
			if c.stale(now) {
				n++
			}
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
