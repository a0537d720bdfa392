// Package accesslog is the writer under the access log: whole lines kept in
// a bounded buffer and written by their own goroutine, so that a request
// never waits on the log's file or pipe. A line that does not fit is
// dropped and counted; Close writes what is buffered.
package accesslog

import (
	"errors"
	"io"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// BufferSize is how many bytes of lines wait for the writer at most; as
// much again may be in the write under way.
const BufferSize = 1 << 20

// ErrClosed is a Write after Close.
var ErrClosed = errors.New("access log closed")

// Writer buffers lines for an io.Writer. Each Write must be one whole line,
// as a slog handler writes a record; lines reach the io.Writer whole and in
// order, several per write when they come faster than it takes them.
type Writer struct {
	out  io.Writer
	size int

	mu     sync.Mutex
	buf    []byte // lines waiting
	spare  []byte // the buffer of the last write, reused
	closed bool
	wake   chan struct{} // one pending signal to the writer goroutine
	done   chan struct{} // closed when the goroutine has written the last lines

	dropped   prometheus.Counter
	dropBytes prometheus.Counter
	failed    prometheus.Counter
}

var _ prometheus.Collector = (*Writer)(nil)

// New starts the writer of out with a buffer of size bytes (BufferSize
// when 0).
func New(out io.Writer, size int) *Writer {
	if size <= 0 {
		size = BufferSize
	}
	w := &Writer{
		out: out, size: size,
		wake: make(chan struct{}, 1), done: make(chan struct{}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gatehouse_access_log_dropped_lines_total",
			Help: "Access log lines dropped because the log's output did not keep up and the buffer was full.",
		}),
		dropBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gatehouse_access_log_dropped_bytes_total",
			Help: "Bytes of the access log lines dropped.",
		}),
		failed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gatehouse_access_log_write_errors_total",
			Help: "Writes of buffered access log lines to the log's output that failed; their lines are lost.",
		}),
	}
	go w.run()
	return w
}

// Write queues line and returns at once: dropped (and counted) when the
// buffer has no room for it, never waiting for the output. It reports the
// whole line written either way, so the logger goes on.
func (w *Writer) Write(line []byte) (int, error) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return 0, ErrClosed
	}
	if len(w.buf)+len(line) > w.size {
		w.mu.Unlock()
		w.dropped.Inc()
		w.dropBytes.Add(float64(len(line)))
		return len(line), nil
	}
	w.buf = append(w.buf, line...)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default: // already signalled
	}
	return len(line), nil
}

// run writes the buffered lines whenever there are some, until Close.
func (w *Writer) run() {
	defer close(w.done)
	for range w.wake {
		w.mu.Lock()
		batch := w.buf
		w.buf = w.spare[:0]
		w.mu.Unlock()
		if len(batch) > 0 {
			if _, err := w.out.Write(batch); err != nil {
				w.failed.Inc()
			}
		}
		w.mu.Lock()
		w.spare = batch[:0]
		if w.closed && len(w.buf) == 0 {
			w.mu.Unlock()
			return
		}
		// Lines still buffered have a wake-up pending: each Write
		// signals after its append.
		w.mu.Unlock()
	}
}

// Close refuses further lines, writes those buffered and waits for that
// write (it may block as long as the output does).
func (w *Writer) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		<-w.done
		return nil
	}
	w.closed = true
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
	<-w.done
	return nil
}

// Describe implements prometheus.Collector.
func (w *Writer) Describe(ch chan<- *prometheus.Desc) {
	w.dropped.Describe(ch)
	w.dropBytes.Describe(ch)
	w.failed.Describe(ch)
}

// Collect implements prometheus.Collector.
func (w *Writer) Collect(ch chan<- prometheus.Metric) {
	w.dropped.Collect(ch)
	w.dropBytes.Collect(ch)
	w.failed.Collect(ch)
}
