package rules

import (
	"context"
	"time"
)

// Outcome is what one fetch-verify-apply round of a feed came to.
type Outcome struct {
	Feed string `json:"feed"`
	// Result is ResultApplied, ResultAccepted, ResultDeferred or
	// ResultUnchanged, or the Reason of a refusal (ReasonQuarantined for a
	// release held until `gatehouse feed accept`; ReasonStore for one
	// applied but not saved); empty for a round abandoned as the daemon
	// stopped.
	Result string `json:"result"`
	// Serial is the release applied (saved or not), deferred, unchanged in
	// force, or held in quarantine; 0 otherwise.
	Serial   uint64 `json:"serial,omitempty"`
	Prefixes int    `json:"prefixes,omitempty"` // of the release applied
	Error    string `json:"error,omitempty"`
	// At is when the round ended, and Reused says that this outcome is
	// an earlier round's, answered again (the daemon's refresh on request
	// does not fetch one feed twice within a few seconds).
	At     time.Time `json:"at,omitzero"`
	Reused bool      `json:"reused,omitempty"`
}

// OK reports whether the round left the feed current: a new release
// applied, or the one in force confirmed.
func (o Outcome) OK() bool {
	switch o.Result {
	case ResultApplied, ResultAccepted, ResultUnchanged:
		return true
	}
	return false
}

// Refresh runs one round for feed name now, as the refresh loop would,
// and says what came of it: an urgent range change need not wait for the
// refresh interval. It waits for a round of the loop already running. The
// error is only for a feed name the configuration lacks; a refusal is in
// the Outcome (logged and counted as on every round).
func (m *Manager) Refresh(ctx context.Context, name string, onUpdate ApplyFunc) (Outcome, error) {
	f, err := m.feed(name)
	if err != nil {
		return Outcome{}, err
	}
	o, _ := m.cycle(ctx, f, onUpdate)
	return o, nil
}

func (m *Manager) outcome(f *feed, result string, ver *Verified, err error) Outcome {
	o := Outcome{Feed: f.cfg.Name, Result: result}
	if err != nil {
		o.Error = err.Error()
	}
	switch {
	case ver != nil && (result == ResultApplied || result == ResultAccepted || result == ResultDeferred || result == string(ReasonStore)):
		o.Serial, o.Prefixes = ver.Manifest.Serial, len(ver.Prefixes)
	case ver != nil && result == string(ReasonQuarantined):
		o.Serial = ver.Manifest.Serial
	case result == ResultUnchanged:
		f.mu.Lock()
		if f.current != nil {
			o.Serial = f.current.Manifest.Serial
		}
		f.mu.Unlock()
	}
	return o
}
