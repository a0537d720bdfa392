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

// TestReadBuffer: a direction reads into its small buffer, borrows a
// pooled one while reads fill what it has, and gives it back at the first
// short read.
func TestReadBuffer(t *testing.T) {
	var b ReadBuffer
	defer b.Release()
	if n := len(b.Next()); n != SmallBufferSize {
		t.Fatalf("first read into %d bytes, want the small %d", n, SmallBufferSize)
	}
	b.Done(100)
	if n := len(b.Next()); n != SmallBufferSize {
		t.Fatalf("after a short read: %d bytes, want the small %d", n, SmallBufferSize)
	}
	b.Done(SmallBufferSize)
	if n := len(b.Next()); n != BufferSize {
		t.Fatalf("after a full small read: %d bytes, want the pooled %d", n, BufferSize)
	}
	b.Done(BufferSize / 2) // a full TLS record: bulk goes on
	if n := len(b.Next()); n != BufferSize {
		t.Fatalf("during bulk: %d bytes, want the pooled %d", n, BufferSize)
	}
	b.Done(10)
	if b.large != nil || len(b.Next()) != SmallBufferSize {
		t.Fatal("a short read did not give the pooled buffer back")
	}
}
