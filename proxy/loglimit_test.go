package proxy

import (
	"testing"
	"time"
)

func TestLogLimiter(t *testing.T) {
	l := newLogLimiter(10, 3)
	now := time.Unix(1000, 0)
	for i := range 3 {
		if ok, _ := l.allow(now); !ok {
			t.Fatalf("line %d of the burst held back", i)
		}
	}
	for range 5 {
		if ok, _ := l.allow(now); ok {
			t.Fatal("line beyond the burst let through")
		}
	}
	// 100 ms later one token is back; the line reports the 5 held back.
	if ok, held := l.allow(now.Add(100 * time.Millisecond)); !ok || held != 5 {
		t.Errorf("after a refill: ok %v, held %d; want true, 5", ok, held)
	}
	if ok, held := l.allow(now.Add(time.Hour)); !ok || held != 0 {
		t.Errorf("an hour later: ok %v, held %d; want true, 0", ok, held)
	}
}
