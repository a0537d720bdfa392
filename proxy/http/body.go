package httpproxy

import (
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
