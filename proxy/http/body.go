package httpproxy

import (
	"errors"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
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
	eof  atomic.Bool
}

func (b *countingBody) Read(p []byte) (int, error) {
	// Each read may wait idle long. The deadline is lifted once the body
	// ends, so a slow backend answer does not trip it; after a failed
	// body it is moved to now, so net/http's attempt to drain the rest
	// (when the transport closes the body) cannot hang on a stalled
	// client, and the connection, out of step now, is closed.
	b.ctl.SetReadDeadline(time.Now().Add(b.idle))
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

// copyBuffers recycles the 32 KiB buffers of response copies, which
// ReverseProxy would otherwise allocate per request.
var copyBuffers = &bufferPool{p: sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}

type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte  { return *b.p.Get().(*[]byte) }
func (b *bufferPool) Put(s []byte) { b.p.Put(&s) }

// errBodyClosed is a read of a request body after the request ended.
var errBodyClosed = errors.New("request body closed")

// chunkSize is the size of copyBuffers' buffers, in which request bodies
// are held.
const chunkSize = 32 << 10

// bufferedBody is a request body read ahead into pooled chunks: the whole
// body when it ended within the buffer size, else its start followed by the
// rest of the client's body as it arrives.
type bufferedBody struct {
	mu     sync.Mutex
	chunks [][]byte // from copyBuffers; all full but the last
	n      int64    // bytes held
	off    int64    // bytes read from the chunks
	rest   io.ReadCloser
	closed bool
}

// readAhead reads body until it ends or holds more than limit bytes. On an
// error nothing is kept.
func readAhead(body io.ReadCloser, limit int64) (*bufferedBody, error) {
	b := &bufferedBody{}
	for b.n <= limit {
		if k := len(b.chunks); k == 0 || len(b.chunks[k-1]) == chunkSize {
			b.chunks = append(b.chunks, copyBuffers.Get()[:0])
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

// whole reports whether the body ended within the chunks.
func (b *bufferedBody) whole() bool { return b.rest == nil }

func (b *bufferedBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return 0, errBodyClosed
	}
	if b.off < b.n {
		c := b.chunks[b.off/chunkSize]
		n := copy(p, c[b.off%chunkSize:])
		b.off += int64(n)
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

// Close returns the chunks to the pool; the transport may close the body
// while it reads, or read after the handler returned, and gets an error.
func (b *bufferedBody) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	for _, c := range b.chunks {
		copyBuffers.Put(c[:chunkSize])
	}
	b.chunks = nil
	rest := b.rest
	b.mu.Unlock()
	if rest != nil {
		return rest.Close()
	}
	return nil
}

// bufferBody reads a request body of up to the tenant's body_buffer_size
// before anything of the request goes to the backend, so that a body that
// breaks off, stalls or goes over the limit never half-arrives. The whole
// body goes on with its length; a longer one streams on after its start.
// It reports false when it answered the request itself.
func bufferBody(w http.ResponseWriter, r *http.Request, limit int64) bool {
	if r.Body == nil || r.Body == http.NoBody || limit <= 0 || r.ContentLength > limit {
		return true
	}
	b, err := readAhead(r.Body, limit)
	if err != nil {
		refuseBody(w, err)
		return false
	}
	// The client had its 100 Continue when the reading began; the backend
	// gets the body at once, and must not be asked to invite it (a backend
	// that never answers 100 would cost each request the transport's wait).
	r.Header.Del("Expect")
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
// limit, stalled, or malformed (bad chunking, cut off).
func refuseBody(w http.ResponseWriter, err error) {
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		refuse(w, http.StatusRequestEntityTooLarge, "request body too large")
	case isTimeout(err):
		refuse(w, http.StatusRequestTimeout, "request body timed out")
	default:
		refuse(w, http.StatusBadRequest, "bad request body")
	}
}
