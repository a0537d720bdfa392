package relay

import "sync"

// BufferSize is the size of every pooled copy buffer: large enough for a
// full TLS record plus framing, small enough that ten thousand idle
// relays stay cheap (buffers are only held while a copy is running).
const BufferSize = 32 << 10

// SmallBufferSize is the read buffer a relay direction keeps for itself:
// what it holds while idle, and all a terminal's or an interactive
// stream's messages need.
const SmallBufferSize = 4 << 10

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

// ReadBuffer is one direction's read buffer, sized by the traffic: its own
// small buffer while the direction is idle or carries small messages, and
// a pooled large one borrowed while reads fill the small one (a bulk
// transfer), given back as soon as a read is short again. So an idle
// session holds SmallBufferSize bytes a direction instead of a pooled
// buffer, and a bulk transfer still moves in few large reads and writes.
// The zero value is ready; Release gives a borrowed buffer back.
type ReadBuffer struct {
	small, large []byte
}

// Next returns the buffer for the next read.
func (b *ReadBuffer) Next() []byte {
	if b.large != nil {
		return b.large
	}
	if b.small == nil {
		b.small = make([]byte, SmallBufferSize)
	}
	return b.small
}

// Done tells of the read into Next's buffer, n bytes, once they were used:
// it decides the buffer of the next read.
func (b *ReadBuffer) Done(n int) {
	switch {
	case b.large == nil && n == len(b.small):
		b.large = Buffers.Get()
	case b.large != nil && n < SmallBufferSize:
		Buffers.Put(b.large)
		b.large = nil
	}
}

// Release gives a borrowed large buffer back to the pool.
func (b *ReadBuffer) Release() {
	if b.large != nil {
		Buffers.Put(b.large)
		b.large = nil
	}
}
