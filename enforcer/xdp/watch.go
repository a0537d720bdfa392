package xdp

// HoldsPrevious reports, before the first Apply, whether the Enforcer
// adopted a filter that a previous run left attached and pinned: that
// filter enforces the previous run's last generation. The daemon asks so
// that a generation built without every feed's release (a lost state
// directory, an unreachable feed) does not replace it. After an Apply the
// answer means nothing.
func (e *Enforcer) HoldsPrevious() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return !e.closed && e.link != nil
}
