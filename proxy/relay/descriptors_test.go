package relay

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func softLimit(t *testing.T) int {
	t.Helper()
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	return int(min(rl.Cur, uint64(1<<31-1)))
}

// lowWithin calls d.Low in its own goroutine and fails the test when it
// does not answer within ten seconds.
func lowWithin(t *testing.T, d *Descriptors) bool {
	t.Helper()
	answered := make(chan bool, 1)
	go func() {
		low, _, _ := d.Low(-1)
		answered <- low
	}()
	select {
	case low := <-answered:
		return low
	case <-time.After(10 * time.Second):
		t.Fatal("Low waited for a count in progress")
		return false
	}
}

// TestDescriptorsCountOffThePath: Low, which every accept and backend dial
// asks, never waits for a count of the open descriptors, however long
// one takes; near the reserve it asks the background count for a fresh
// one instead.
func TestDescriptorsCountOffThePath(t *testing.T) {
	limit := softLimit(t)
	entered, release := make(chan struct{}, 1), make(chan struct{})
	var calls atomic.Int32
	d := newDescriptors(func() (int, error) {
		if calls.Add(1) == 1 {
			return limit - DescriptorReserve(limit) - 1, nil // near, not within
		}
		select {
		case entered <- struct{}{}:
		default:
		}
		<-release
		return 10, nil
	}, DescriptorsConfig{})
	defer d.Close()
	defer close(release)
	if lowWithin(t, d) {
		t.Fatal("within the reserve one descriptor below it")
	}
	select {
	case <-entered: // Low, near the reserve, asked for a count: it is running
	case <-time.After(10 * time.Second):
		t.Fatal("near the reserve, Low asked for no fresh count")
	}
	d.Hold()
	if !lowWithin(t, d) {
		t.Error("one more descriptor held at the reserve's edge, and Low says not within it")
	}
}

// TestDescriptorsCountFails: when the descriptors cannot be counted, the
// reserve still holds, by RLIMIT_NOFILE and what the proxies hold
// themselves, and the failure is told once, not at every count.
func TestDescriptorsCountFails(t *testing.T) {
	limit := softLimit(t)
	var told, calls atomic.Int32
	boom := errors.New("no /proc")
	d := newDescriptors(func() (int, error) { calls.Add(1); return 0, boom }, DescriptorsConfig{
		CountFailed: func(err error) {
			if !errors.Is(err, boom) {
				t.Errorf("told %v, want the count's error", err)
			}
			told.Add(1)
		},
	})
	defer d.Close()
	for range limit - DescriptorReserve(limit) {
		d.Hold()
	}
	low, open, got := d.Low(-1)
	if !low || got != limit {
		t.Errorf("Low = %v, open %d, limit %d: want within the reserve of RLIMIT_NOFILE %d", low, open, got, limit)
	}
	for calls.Load() < 4 { // more failing counts
		select {
		case d.kick <- struct{}{}:
		case <-time.After(10 * time.Second):
			t.Fatalf("the background count stopped after %d counts", calls.Load())
		}
	}
	if n := told.Load(); n != 1 {
		t.Errorf("a run of failed counts told %d times, want once", n)
	}
}

// TestDescriptorsDialer: a dial within the reserve is refused before it
// is made; one outside is counted until its connection closes.
func TestDescriptorsDialer(t *testing.T) {
	limit := softLimit(t)
	var open atomic.Int64
	d := newDescriptors(func() (int, error) { return int(open.Load()), nil }, DescriptorsConfig{})
	defer d.Close()
	var dialled atomic.Int32
	dial := d.Dialer(func(context.Context, string, string) (net.Conn, error) {
		dialled.Add(1)
		a, b := net.Pipe()
		b.Close()
		return a, nil
	})
	c, err := dial(context.Background(), "tcp", "192.0.2.1:80")
	if err != nil {
		t.Fatal(err)
	}
	if n := d.held.Load(); n != 1 {
		t.Errorf("held %d after a dial, want 1", n)
	}
	c.Close()
	c.Close()
	if n := d.held.Load(); n != 0 {
		t.Errorf("held %d after the close, want 0", n)
	}
	for range limit - DescriptorReserve(limit) {
		d.Hold()
	}
	if _, err := dial(context.Background(), "tcp", "192.0.2.1:80"); !errors.Is(err, ErrDescriptors) {
		t.Errorf("dial within the reserve: %v, want ErrDescriptors", err)
	}
	if n := dialled.Load(); n != 1 {
		t.Errorf("%d dials made, want 1: the refused one must not be", n)
	}
}
