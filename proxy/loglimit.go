package proxy

import (
	"sync"
	"time"
)

// logLimiter bounds a log line that a client can trigger at will (a
// refused handshake): a burst, then a steady rate; what it holds back is
// counted and reported on the next line let through.
type logLimiter struct {
	rate  float64 // lines per second
	burst float64

	mu         sync.Mutex
	tokens     float64
	last       time.Time
	suppressed int
}

func newLogLimiter(perSecond float64, burst int) *logLimiter {
	return &logLimiter{rate: perSecond, burst: float64(burst), tokens: float64(burst)}
}

// allow reports whether a line may be written now, and how many were held
// back since the last one that was.
func (l *logLimiter) allow(now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() {
		l.tokens = min(l.burst, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	}
	l.last = now
	if l.tokens < 1 {
		l.suppressed++
		return false, 0
	}
	l.tokens--
	n := l.suppressed
	l.suppressed = 0
	return true, n
}
