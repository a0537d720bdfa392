package accesslog_test

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/internal/accesslog"
	"github.com/prometheus/client_golang/prometheus"
)

// gate is an output that takes nothing until opened: a log reader that
// stalls.
type gate struct {
	open chan struct{}
	mu   sync.Mutex
	buf  bytes.Buffer
}

func (g *gate) Write(p []byte) (int, error) {
	<-g.open
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.buf.Write(p)
}

func TestLinesInOrderAndFlushedOnClose(t *testing.T) {
	var out bytes.Buffer
	w := accesslog.New(&out, 0)
	var want strings.Builder
	for i := range 10000 {
		line := fmt.Sprintf(`{"n":%d}`+"\n", i)
		want.WriteString(line)
		if n, err := w.Write([]byte(line)); err != nil || n != len(line) {
			t.Fatalf("Write: %d %v", n, err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if out.String() != want.String() {
		t.Errorf("output differs from the lines written (%d bytes, want %d)", out.Len(), want.Len())
	}
	if _, err := w.Write([]byte("late\n")); err == nil {
		t.Error("Write after Close succeeded")
	}
	if got := metric(t, w, "gatehouse_access_log_dropped_lines_total"); got != 0 {
		t.Errorf("dropped %v, want 0", got)
	}
}

// A stalled output must not stall the writers: lines beyond the buffer
// are dropped and counted, and the ones kept come out whole.
func TestStalledOutputDropsAndCounts(t *testing.T) {
	g := &gate{open: make(chan struct{})}
	const size = 4096
	w := accesslog.New(g, size)
	line := []byte(strings.Repeat("x", 99) + "\n")
	for range 1000 { // 100 kB into a 4 KiB buffer and one write stuck in the gate
		w.Write(line)
	}
	close(g.open)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	kept := g.buf.Len() / len(line)
	if g.buf.Len()%len(line) != 0 || kept == 0 || kept > 2*size/len(line) {
		t.Errorf("output %d bytes: want whole lines, at most two buffers' worth", g.buf.Len())
	}
	for l := range strings.SplitSeq(strings.TrimSuffix(g.buf.String(), "\n"), "\n") {
		if l != string(line[:99]) {
			t.Fatalf("a broken line in the output: %q", l)
		}
	}
	if got := int(metric(t, w, "gatehouse_access_log_dropped_lines_total")); got != 1000-kept {
		t.Errorf("dropped_lines_total %d, want %d (1000 written, %d kept)", got, 1000-kept, kept)
	}
	if got := int(metric(t, w, "gatehouse_access_log_dropped_bytes_total")); got != (1000-kept)*len(line) {
		t.Errorf("dropped_bytes_total %d, want %d", got, (1000-kept)*len(line))
	}
}

// metric is the value of the writer's series name.
func metric(t *testing.T, w *accesslog.Writer, name string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(w)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no series %s", name)
	return 0
}

var _ io.Writer = (*accesslog.Writer)(nil)
