package relay

import "time"

// Bucket is a token bucket: up to burst events at once, then rate a
// second. Rate and burst are given with each Take, so one kind of Bucket
// serves every bound (log lines a client can cause, a terminal's
// negotiations). The zero value is full. It is not safe for concurrent
// use: its owner serialises Take.
type Bucket struct {
	tokens float64
	last   time.Time
}

// Take reports whether an event may happen at now, and counts it if so.
func (b *Bucket) Take(now time.Time, rate, burst float64) bool {
	if b.last.IsZero() {
		b.tokens = burst
	} else {
		b.tokens = min(burst, b.tokens+now.Sub(b.last).Seconds()*rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
