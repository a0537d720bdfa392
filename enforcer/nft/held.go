package nft

import "fmt"

// HoldsPrevious reports whether table inet gatehouse, as a previous run
// left it, admits any source, while this Enforcer has applied nothing yet.
// The daemon asks before its first Apply: a generation built without every
// feed's release (a lost state directory, a feed unreachable) must not
// replace admitted sets that still hold what the previous run enforced.
// It reads the two admitted sets once, at start.
func (e *Enforcer) HoldsPrevious() (bool, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return false, ErrClosed
	}
	if e.cur != nil {
		return false, nil
	}
	c, err := e.conn()
	if err != nil {
		return false, err
	}
	found, err := tableExists(c)
	if err != nil || !found {
		return false, err
	}
	sets, err := c.GetSets(ourTable())
	if err != nil {
		return false, fmt.Errorf("list sets: %w", err)
	}
	for _, s := range sets {
		if s.Name != setName(setAdmitted, false) && s.Name != setName(setAdmitted, true) {
			continue
		}
		elems, err := c.GetSetElements(s)
		if err != nil {
			return false, fmt.Errorf("set %s: %w", s.Name, err)
		}
		if len(elems) > 0 {
			return true, nil
		}
	}
	return false, nil
}
