package relay

import (
	"testing"
	"time"
)

func TestBucket(t *testing.T) {
	var b Bucket
	now := time.Unix(1000, 0)
	for i := range 3 {
		if !b.Take(now, 10, 3) {
			t.Fatalf("event %d of the burst refused", i)
		}
	}
	if b.Take(now, 10, 3) {
		t.Fatal("event beyond the burst allowed")
	}
	// 100 ms at 10 a second is one token.
	if !b.Take(now.Add(100*time.Millisecond), 10, 3) {
		t.Error("no token 100 ms later")
	}
	if b.Take(now.Add(100*time.Millisecond), 10, 3) {
		t.Error("two tokens 100 ms later")
	}
	// An hour refills the burst, not more.
	later := now.Add(time.Hour)
	n := 0
	for b.Take(later, 10, 3) {
		n++
	}
	if n != 3 {
		t.Errorf("%d events after an hour, want the burst of 3", n)
	}
}
