package relay

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// Why a Timer ended a session.
var (
	ErrIdle       = errors.New("session idle too long")
	ErrMaxSession = errors.New("session reached its maximum length")
)

// Timer ends a session that saw no traffic for an idle timeout, or that
// began longer ago than a maximum session length. Both limits may change
// while the session runs (Set, for example on a reload), and take effect
// at once: a lowered limit the session already exceeds ends it.
type Timer struct {
	start time.Time
	end   func(error)

	// last is the unix time in nanoseconds of the last Touch; it is only
	// kept while an idle timeout is set, so an unlimited session reads no
	// clock per read.
	last   atomic.Int64
	idleOn atomic.Bool

	mu        sync.Mutex
	idle, max time.Duration
	t         *time.Timer
	stopped   bool
}

// NewTimer starts a timer for a session that began at start. end runs at
// most once, in its own goroutine, with ErrIdle or ErrMaxSession; it
// should close the session. Zero limits are off.
func NewTimer(start time.Time, idle, max time.Duration, end func(error)) *Timer {
	t := &Timer{start: start, end: end}
	t.Set(idle, max)
	return t
}

// Touch records traffic now. It is cheap enough to call on every read.
func (t *Timer) Touch() {
	if t.idleOn.Load() {
		t.last.Store(time.Now().UnixNano())
	}
}

// Set replaces both limits. A session whose idle time was not kept so
// far (no idle timeout until now) counts as active now.
func (t *Timer) Set(idle, max time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return
	}
	if idle > 0 && !t.idleOn.Load() {
		t.last.Store(time.Now().UnixNano())
	}
	t.idleOn.Store(idle > 0)
	t.idle, t.max = idle, max
	t.arm(time.Now())
}

// Limits returns the limits in force.
func (t *Timer) Limits() (idle, max time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.idle, t.max
}

// Stop ends the timer without ending the session.
func (t *Timer) Stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.stopped = true
	if t.t != nil {
		t.t.Stop()
	}
}

// arm schedules the next check at the earliest moment a limit can be
// reached. t.mu is held.
func (t *Timer) arm(now time.Time) {
	var next time.Duration
	if t.max > 0 {
		next = t.start.Add(t.max).Sub(now)
	}
	if t.idle > 0 {
		d := time.Unix(0, t.last.Load()).Add(t.idle).Sub(now)
		if next == 0 || d < next {
			next = d
		}
	}
	switch {
	case t.max <= 0 && t.idle <= 0:
		if t.t != nil {
			t.t.Stop()
		}
		return
	case next <= 0:
		next = time.Nanosecond // due now: check in the timer's goroutine
	}
	if t.t == nil {
		t.t = time.AfterFunc(next, t.fire)
		return
	}
	t.t.Reset(next)
}

func (t *Timer) fire() {
	t.mu.Lock()
	if t.stopped {
		t.mu.Unlock()
		return
	}
	now := time.Now()
	var why error
	switch {
	case t.max > 0 && !now.Before(t.start.Add(t.max)):
		why = ErrMaxSession
	case t.idle > 0 && now.Sub(time.Unix(0, t.last.Load())) >= t.idle:
		why = ErrIdle
	default:
		t.arm(now)
		t.mu.Unlock()
		return
	}
	t.stopped = true
	t.mu.Unlock()
	t.end(why)
}
