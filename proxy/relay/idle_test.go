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
// connection over loopback (the client's over TLS, as a listener's, when
// tlsFront is set), moves one short message each way through
// every one (so each direction has read and written), and returns the
// heap and stack bytes the relays hold, idle, beside the connections
// themselves, divided by n, and the goroutines they run, divided by n.
func idleRelays(tb testing.TB, n int, tlsFront bool) (bytesPer float64, goroutinesPer float64) {
	type ends struct{ client, front, back, backend net.Conn }
	all := make([]ends, n)
	for i := range all {
		var client, front net.Conn
		if tlsFront {
			client, front = tlsPair(tb)
		} else {
			client, front = testkit.TCPPair(tb)
		}
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

// TestIdleRelayMemory: a relay that waits for traffic holds no pooled
// copy buffer and one goroutine of its own beside its caller's: a plain
// socket is waited on without a buffer, a TLS connection with a small
// one. Ten thousand idle sessions must stay cheap.
func TestIdleRelayMemory(t *testing.T) {
	const n = 200
	for _, tc := range []struct {
		name     string
		tlsFront bool
		limit    int
	}{
		{"tcp", false, 12 << 10},                      // two goroutines' stacks
		{"tls", true, relay.SmallBufferSize + 12<<10}, // and the TLS side's small buffer
	} {
		t.Run(tc.name, func(t *testing.T) {
			perRelay, goroutines := idleRelays(t, n, tc.tlsFront)
			t.Logf("%.0f bytes and %.2f goroutines per idle relay", perRelay, goroutines)
			if !raceDetector && perRelay > float64(tc.limit) {
				t.Errorf("an idle relay holds %.0f bytes, want at most %d", perRelay, tc.limit)
			}
			if goroutines > 2.05 { // the caller's and one more
				t.Errorf("an idle relay runs %.2f goroutines, want 2", goroutines)
			}
		})
	}
}

// BenchmarkIdleRelay reports the memory an idle relay holds beside its
// connections (bytes/idle-session), its client side over TLS.
func BenchmarkIdleRelay(b *testing.B) {
	var sum float64
	for range b.N {
		per, _ := idleRelays(b, 1000, true)
		sum += per
	}
	b.ReportMetric(sum/float64(b.N), "bytes/idle-session")
}
