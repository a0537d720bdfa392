package tunnel

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// blackhole forwards TCP to a target until silence, after which it drops
// every byte either way without closing anything: a path that died
// without a FIN or a RST, as a NAT table losing its entry does.
type blackhole struct {
	ln     net.Listener
	dead   atomic.Bool
	mu     sync.Mutex
	conns  []net.Conn
	target string
}

func newBlackhole(t *testing.T, target string) *blackhole {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackhole{ln: ln, target: target}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			b.mu.Lock()
			b.conns = append(b.conns, c, u)
			b.mu.Unlock()
			go b.pipe(c, u)
			go b.pipe(u, c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		for _, c := range b.conns {
			c.Close()
		}
		b.mu.Unlock()
	})
	return b
}

func (b *blackhole) addr() string { return b.ln.Addr().String() }

func (b *blackhole) silence() { b.dead.Store(true) }

func (b *blackhole) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		if b.dead.Load() {
			continue
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}
