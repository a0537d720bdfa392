package relay

import "sync"

// BufferSize is the size of every pooled copy buffer: large enough for a
// full TLS record plus framing, small enough that ten thousand idle
// relays stay cheap (buffers are only held while a copy is running).
const BufferSize = 32 << 10

// Buffers is the one pool of copy buffers of every proxy: the relay's
// half-closing copies, the bulk reads of terminal sessions, and the
// HTTP reverse proxy's response copies (it satisfies
// httputil.BufferPool).
var Buffers = &BufferPool{}

// BufferPool recycles buffers of BufferSize bytes.
type BufferPool struct{ p sync.Pool }

// Get returns a buffer of BufferSize bytes.
func (b *BufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, BufferSize)
}

// Put returns a buffer Get gave out; others (a smaller one) are dropped.
func (b *BufferPool) Put(buf []byte) {
	if cap(buf) < BufferSize {
		return
	}
	buf = buf[:BufferSize]
	b.p.Put(&buf)
}
