package proxy

import (
	"sync"
	"time"

	"github.com/gatehouse-dmz/gatehouse/proxy/relay"
)

// logLimiter bounds a log line that a client can trigger at will (a
// refused handshake): a burst, then a steady rate; what it holds back is
// counted and reported on the next line let through.
type logLimiter struct {
	rate  float64 // lines per second
	burst float64

	mu         sync.Mutex
	bucket     relay.Bucket
	suppressed int
}

func newLogLimiter(perSecond float64, burst int) *logLimiter {
	return &logLimiter{rate: perSecond, burst: float64(burst)}
}

// allow reports whether a line may be written now, and how many were held
// back since the last one that was.
func (l *logLimiter) allow(now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.bucket.Take(now, l.rate, l.burst) {
		l.suppressed++
		return false, 0
	}
	n := l.suppressed
	l.suppressed = 0
	return true, n
}
