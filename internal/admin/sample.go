package admin

import (
	"sync"
	"time"
)

// Reads are the actions that only read (answered filtered to the
// principal's scope). A status page polls them every few seconds.
func (a Action) Read() bool { return need[a].filtered }

// ReadSampler keeps granted reads from flooding the audit log: of one
// principal's reads of one kind, one line per period is written, and that
// line carries how many were answered since the previous one and not
// written. Refusals and failures are not its business: they are always
// written.
type ReadSampler struct {
	every time.Duration

	mu      sync.Mutex
	pending map[string]*sampled
}

type sampled struct {
	written time.Time // when the last line was written
	skipped int       // reads answered since, not written
	last    Entry     // the newest of them
}

// NewReadSampler writes one line per principal and read action each period.
func NewReadSampler(every time.Duration) *ReadSampler {
	return &ReadSampler{every: every, pending: map[string]*sampled{}}
}

// Admit reports whether e, a granted read, is to be written now; when it
// is, e's args say how many reads were answered before it and not written
// ("reads_not_written"). Otherwise it is counted for the next line.
func (s *ReadSampler) Admit(e *Entry) bool {
	key := e.Transport + "\x00" + e.Principal + "\x00" + string(e.Action)
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.pending[key]
	if p != nil && e.Time.Sub(p.written) < s.every {
		p.skipped++
		p.last = *e
		return false
	}
	if p != nil && p.skipped > 0 {
		if e.Args == nil {
			e.Args = map[string]any{}
		}
		e.Args["reads_not_written"] = p.skipped
	}
	s.pending[key] = &sampled{written: e.Time}
	// Forget principals gone quiet, so the map stays as small as the
	// set of principals reading now.
	for k, q := range s.pending {
		if q.skipped == 0 && e.Time.Sub(q.written) >= s.every {
			delete(s.pending, k)
		}
	}
	return true
}

// Flush returns a line for each principal and read action with reads not
// yet written (the newest of them, its args saying how many), and forgets
// them: written when the audit log closes, so no count is lost.
func (s *ReadSampler) Flush() []Entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Entry
	for k, p := range s.pending {
		if p.skipped > 0 {
			e := p.last
			args := map[string]any{}
			for k, v := range e.Args {
				args[k] = v
			}
			args["reads_not_written"] = p.skipped - 1
			e.Args = args
			out = append(out, e)
		}
		delete(s.pending, k)
	}
	return out
}
