package relay

import (
	"net/http/httputil"
	"testing"
)

// The HTTP reverse proxy takes the pool as it is.
var _ httputil.BufferPool = Buffers

// TestBuffers: every buffer the pool gives out has BufferSize bytes, also
// after a shorter slice of one came back, and a foreign small buffer is
// never handed out.
func TestBuffers(t *testing.T) {
	var p BufferPool
	b := p.Get()
	if len(b) != BufferSize {
		t.Fatalf("Get: %d bytes, want %d", len(b), BufferSize)
	}
	p.Put(b[:10])
	p.Put(make([]byte, 100))
	for range 3 {
		if b := p.Get(); len(b) != BufferSize {
			t.Fatalf("Get after Put: %d bytes, want %d", len(b), BufferSize)
		}
	}
}
