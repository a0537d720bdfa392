package relay_test

import (
	"io"
	"net"
	"runtime"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/internal/testkit"
	"github.com/gatehouse-dmz/gatehouse/proxy/relay"
)

// idleRelays starts n relays, each between a client and a backend
// connection over loopback, moves one short message each way through
// every one (so each direction has read and written), and returns the
// heap and stack bytes the relays hold, idle, beside the connections
// themselves, divided by n, and the goroutines they run, divided by n.
func idleRelays(tb testing.TB, n int) (bytesPer float64, goroutinesPer float64) {
	type ends struct{ client, front, back, backend net.Conn }
	all := make([]ends, n)
	for i := range all {
		client, front := testkit.TCPPair(tb)
		back, backend := testkit.TCPPair(tb)
		all[i] = ends{client, front, back, backend}
	}
	g0, m0 := settled()
	done := make(chan struct{}, n)
	for _, e := range all {
		go func() {
			relay.Pipe(e.front, e.back)
			done <- struct{}{}
		}()
	}
	msg := []byte("PA1\n")
	got := make([]byte, len(msg))
	for _, e := range all {
		if _, err := e.client.Write(msg); err != nil {
			tb.Fatal(err)
		}
		if _, err := io.ReadFull(e.backend, got); err != nil {
			tb.Fatal(err)
		}
		if _, err := e.backend.Write(msg); err != nil {
			tb.Fatal(err)
		}
		if _, err := io.ReadFull(e.client, got); err != nil {
			tb.Fatal(err)
		}
	}
	g1, m1 := settled()
	for _, e := range all {
		e.client.Close()
		e.backend.Close()
	}
	for range n {
		<-done
	}
	return float64(m1-m0) / float64(n), float64(g1-g0) / float64(n)
}

// settled returns the goroutines and the heap and stack bytes in use once
// garbage is collected.
func settled() (goroutines int, inUse uint64) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return runtime.NumGoroutine(), ms.HeapInuse + ms.StackInuse
}

// TestIdleRelayMemory: a relay that waits for traffic holds small read
// buffers and one goroutine of its own, not a pooled copy buffer a
// direction and two: ten thousand idle sessions must stay cheap.
func TestIdleRelayMemory(t *testing.T) {
	const n = 200
	perRelay, goroutines := idleRelays(t, n)
	t.Logf("%.0f bytes and %.2f goroutines per idle relay", perRelay, goroutines)
	if limit := 2*relay.SmallBufferSize + 8<<10; perRelay > float64(limit) {
		t.Errorf("an idle relay holds %.0f bytes, want at most %d (two small read buffers and a goroutine)", perRelay, limit)
	}
	// The caller's goroutine and one more.
	if goroutines > 2.05 {
		t.Errorf("an idle relay runs %.2f goroutines, want 2", goroutines)
	}
}

// BenchmarkIdleRelay reports the memory an idle relay holds beside its
// connections (bytes/idle-session).
func BenchmarkIdleRelay(b *testing.B) {
	var sum float64
	for range b.N {
		per, _ := idleRelays(b, 1000)
		sum += per
	}
	b.ReportMetric(sum/float64(b.N), "bytes/idle-session")
}
