package relay

import (
	"sync"
	"testing"
)

func TestLimiter(t *testing.T) {
	var l Limiter[[2]string]
	a, b := [2]string{"web", "acme"}, [2]string{"web", "globex"}
	if l.Acquire(a, 0) || l.Acquire(a, -1) {
		t.Fatal("a limit below 1 admitted")
	}
	for i := range 2 {
		if !l.Acquire(a, 2) {
			t.Fatalf("acquire %d of 2 refused", i+1)
		}
	}
	if l.Acquire(a, 2) {
		t.Fatal("third of 2 admitted")
	}
	// Keys are separate budgets; a lowered limit refuses until below it.
	if !l.Acquire(b, 1) {
		t.Fatal("another key refused")
	}
	if l.Acquire(a, 1) {
		t.Fatal("admitted over a lowered limit")
	}
	l.Release(a)
	if l.Acquire(a, 1) {
		t.Fatal("admitted at a lowered limit")
	}
	if !l.Acquire(a, 2) {
		t.Fatal("refused after a release")
	}
	l.Release(a)
	l.Release(a)
	l.Release(a) // one too many: never below zero
	if n := l.Count(a); n != 0 {
		t.Fatalf("count %d after releasing all", n)
	}
	if !l.Acquire(a, 1) || l.Acquire(a, 1) {
		t.Fatal("an extra release widened the budget")
	}
}

// TestLimiterConcurrent: racing acquirers never exceed the limit.
func TestLimiterConcurrent(t *testing.T) {
	var l Limiter[string]
	var wg sync.WaitGroup
	var mu sync.Mutex
	got := 0
	for range 64 {
		wg.Go(func() {
			if l.Acquire("k", 10) {
				mu.Lock()
				got++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if got != 10 || l.Count("k") != 10 {
		t.Fatalf("%d admitted, count %d, want 10", got, l.Count("k"))
	}
}
