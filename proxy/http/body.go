package httpproxy

import (
	"errors"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatehouse-dmz/gatehouse/proxy/relay"
)

// countingBody counts what the client sent and remembers why reading it
// failed, so a bad chunk or an oversize body is answered as the client's
// fault, not the backend's.
type countingBody struct {
	rc   io.ReadCloser
	st   *requestState
	n    atomic.Int64
	ctl  *http.ResponseController
	idle time.Duration
	// until, when set (Unix nanoseconds), is when reading must be done in
	// all: while a body is read whole before it goes on.
	until atomic.Int64
	eof   atomic.Bool
}

func (b *countingBody) Read(p []byte) (int, error) {
	// Each read may wait idle long. The deadline is lifted once the body
	// ends, so a slow backend answer does not trip it; after a failed
	// body it is moved to now, so net/http's attempt to drain the rest
	// (when the transport closes the body) cannot hang on a stalled
	// client, and the connection, out of step now, is closed.
	d := time.Now().Add(b.idle)
	if u := b.until.Load(); u != 0 && u < d.UnixNano() {
		d = time.Unix(0, u)
	}
	b.ctl.SetReadDeadline(d)
	n, err := b.rc.Read(p)
	b.n.Add(int64(n))
	switch {
	case err == io.EOF:
		b.eof.Store(true)
		b.ctl.SetReadDeadline(time.Time{})
	case err != nil:
		b.ctl.SetReadDeadline(time.Now())
		first := err // its own variable: &err would move err to the heap on every Read
		b.st.bodyErr.CompareAndSwap(nil, &first)
	}
	return n, err
}

func (b *countingBody) Close() error { return b.rc.Close() }

// Errors of reading a body.
var (
	// errBodyClosed is a read of a request body after the request ended.
	errBodyClosed = errors.New("request body closed")
	// errBodyBudget is a body the listener has no memory left for.
	errBodyBudget = errors.New("request body buffers full")
)

// chunkSize is the size of the pooled buffers (relay.Buffers) in which
// request bodies are held.
const chunkSize = relay.BufferSize

// bodyBudget is the listener's budget for request bodies held in memory,
// as one request takes from it, one chunk at a time.
type bodyBudget struct {
	h     *Handler
	limit int64
}

func (b *bodyBudget) hold() bool {
	ok, filled, freed := b.h.inFlight.holdBody(b.h.listener, chunkSize, b.limit)
	switch {
	case filled:
		b.h.logger.Warn("request body buffers full: requests that need one get 503 until bodies held finish",
			"listener", b.h.listener, "body_buffer_total", b.limit)
	case freed:
		b.h.logger.Info("request body buffers available again", "listener", b.h.listener)
	}
	return ok
}

func (b *bodyBudget) release(chunks int) {
	b.h.inFlight.releaseBody(b.h.listener, int64(chunks)*chunkSize)
}

// bufferedBody is a request body read ahead into pooled chunks: the whole
// body when it ended within the buffer size, else its start followed by the
// rest of the client's body as it arrives. Its chunks count in the
// listener's budget until they are read on (once forwarding began) or the
// body is closed.
type bufferedBody struct {
	mu     sync.Mutex
	budget *bodyBudget
	chunks [][]byte // from copyBuffers; all full but the last; nil once given back
	n      int64    // bytes held
	off    int64    // bytes read from the chunks
	// forwarding: the body goes on to the backend; a chunk read to its end
	// goes back at once (before, the SOAP inspector reads and rewinds).
	forwarding bool
	rest       io.ReadCloser
	closed     bool
	full       bool // a Write found the budget used up
}

// readAhead reads body until it ends or holds more than limit bytes,
// taking each chunk from budget first. On an error nothing is kept.
func readAhead(body io.ReadCloser, limit int64, budget *bodyBudget) (*bufferedBody, error) {
	b := &bufferedBody{budget: budget}
	for b.n <= limit {
		if k := len(b.chunks); k == 0 || len(b.chunks[k-1]) == chunkSize {
			if !budget.hold() {
				b.Close()
				return nil, errBodyBudget
			}
			b.chunks = append(b.chunks, relay.Buffers.Get()[:0])
		}
		last := &b.chunks[len(b.chunks)-1]
		m, err := body.Read((*last)[len(*last):chunkSize])
		*last = (*last)[:len(*last)+m]
		b.n += int64(m)
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			b.Close()
			return nil, err
		}
	}
	b.rest = body
	return b, nil
}

// Write appends p to the chunks, taking each new chunk from the budget
// first: the SOAP inspector tees what it reads into the body it forwards.
func (b *bufferedBody) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, errBodyClosed
	}
	written := 0
	for len(p) > 0 {
		if k := len(b.chunks); k == 0 || len(b.chunks[k-1]) == chunkSize {
			if !b.budget.hold() {
				b.full = true
				return written, errBodyBudget
			}
			b.chunks = append(b.chunks, relay.Buffers.Get()[:0])
		}
		last := &b.chunks[len(b.chunks)-1]
		m := copy((*last)[len(*last):chunkSize], p)
		*last = (*last)[:len(*last)+m]
		p = p[m:]
		b.n += int64(m)
		written += m
	}
	return written, nil
}

// whole reports whether the body ended within the chunks.
func (b *bufferedBody) whole() bool { return b.rest == nil }

// forward rewinds the body and lets it go on to the backend.
func (b *bufferedBody) forward() {
	b.mu.Lock()
	b.off, b.forwarding = 0, true
	b.mu.Unlock()
}

func (b *bufferedBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return 0, errBodyClosed
	}
	if b.off < b.n {
		i := b.off / chunkSize
		c := b.chunks[i]
		n := copy(p, c[b.off%chunkSize:])
		b.off += int64(n)
		if b.forwarding && (b.off%chunkSize == 0 || b.off == b.n) {
			// Read to its end: nothing reads it again.
			relay.Buffers.Put(c[:chunkSize])
			b.chunks[i] = nil
			b.budget.release(1)
		}
		b.mu.Unlock()
		return n, nil
	}
	rest := b.rest
	b.mu.Unlock()
	if rest == nil {
		return 0, io.EOF
	}
	// Outside the lock: Close must be able to end a read that waits on
	// the client.
	return rest.Read(p)
}

// Close returns the chunks to the pool and the budget; the transport may
// close the body while it reads, or read after the handler returned, and
// gets an error.
func (b *bufferedBody) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	held := 0
	for _, c := range b.chunks {
		if c != nil {
			relay.Buffers.Put(c[:chunkSize])
			held++
		}
	}
	b.budget.release(held)
	b.chunks = nil
	rest := b.rest
	b.mu.Unlock()
	if rest != nil {
		return rest.Close()
	}
	return nil
}

// budget is the listener's body budget.
func (h *Handler) budget() *bodyBudget {
	return &bodyBudget{h: h, limit: h.limits.BodyBufferTotal}
}

// wholeBy bounds, from now, the reading of the client's body in all by
// the tenant's body_buffer_timeout; the returned func lifts the bound.
func (st *requestState) wholeBy() func() {
	if st.body == nil {
		return func() {}
	}
	st.body.until.Store(time.Now().Add(st.lim.BodyBufferTimeout).UnixNano())
	return func() { st.body.until.Store(0) }
}

// bufferBody reads a request body of up to the tenant's body_buffer_size
// before anything of the request goes to the backend, so that a body that
// breaks off, stalls or goes over the limit never half-arrives. The whole
// body goes on with its length; a longer one streams on after its start.
// It reports false when it answered the request itself.
func (h *Handler) bufferBody(w http.ResponseWriter, r *http.Request, st *requestState) bool {
	limit := st.lim.BodyBufferBytes
	if r.Body == nil || r.Body == http.NoBody || limit <= 0 || r.ContentLength > limit {
		return true
	}
	done := st.wholeBy()
	b, err := readAhead(r.Body, limit, h.budget())
	done()
	if err != nil {
		refuseBody(w, err)
		return false
	}
	st.buffered = b // closed when the request ends, whoever ends it
	// The client had its 100 Continue when the reading began; the backend
	// gets the body at once, and must not be asked to invite it (a backend
	// that never answers 100 would cost each request the transport's wait).
	r.Header.Del("Expect")
	b.forward()
	r.Body = b
	if b.whole() {
		r.ContentLength = b.n
		r.TransferEncoding = nil
		if b.n == 0 {
			b.Close()
			r.Body = http.NoBody
		}
	}
	return true
}

// refuseBody answers a request whose body could not be read: over the size
// limit, stalled or too slow, malformed (bad chunking, cut off), or with no
// memory left for it.
func refuseBody(w http.ResponseWriter, err error) {
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		refuse(w, http.StatusRequestEntityTooLarge, "request body too large")
	case isTimeout(err):
		refuse(w, http.StatusRequestTimeout, "request body timed out")
	case errors.Is(err, errBodyBudget):
		w.Header().Set("Retry-After", "1")
		refuse(w, http.StatusServiceUnavailable, "request body buffers full")
	default:
		refuse(w, http.StatusBadRequest, "bad request body")
	}
}
