package relay

import "sync"

// Limiter counts what each key (a listener and a tenant, say) holds open
// against a limit the caller passes with each Acquire: the limit of the
// policy generation in force now, while the count outlives generations,
// so a reload neither resets a budget nor gives a second one. It is the
// one per-(listener, tenant) budget of the proxies: connections per
// tenant, requests in flight, terminal sessions. The zero Limiter is
// ready to use.
type Limiter[K comparable] struct {
	mu sync.Mutex
	n  map[K]int
}

// Acquire counts one more for k and reports true if k held fewer than
// limit; otherwise it counts nothing and reports false. A limit below 1
// admits nothing: a missing limit fails closed.
func (l *Limiter[K]) Acquire(k K, limit int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[k] >= limit {
		return false
	}
	if l.n == nil {
		l.n = map[K]int{}
	}
	l.n[k]++
	return true
}

// Release gives back one Acquire of k.
func (l *Limiter[K]) Release(k K) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[k] <= 1 {
		delete(l.n, k)
		return
	}
	l.n[k]--
}

// Count returns what k holds.
func (l *Limiter[K]) Count(k K) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n[k]
}
