// Package testkit holds what the tests of several packages share: a log
// buffer that concurrent writers may use, and both ends of a loopback TCP
// connection. Only tests import it.
package testkit

import (
	"bytes"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// LogBuffer collects what a logger (or a child process) writes, safe for
// concurrent writers and readers.
type LogBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	discard atomic.Bool
}

// Write appends p, or drops it while Discard is on.
func (l *LogBuffer) Write(p []byte) (int, error) {
	if l.discard.Load() {
		return len(p), nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything written so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Discard drops what is written from now on (on) or keeps it again (off):
// a benchmark still pays for encoding its log lines, not for keeping them.
func (l *LogBuffer) Discard(on bool) { l.discard.Store(on) }

// Count is how many log lines written by slog's text handler have msg as
// their message, quoted (as slog writes one with spaces) or bare.
func (l *LogBuffer) Count(msg string) int {
	n := 0
	for _, line := range strings.Split(l.String(), "\n") {
		if strings.Contains(line, ` msg="`+msg+`"`) || strings.Contains(line+" ", ` msg=`+msg+` `) {
			n++
		}
	}
	return n
}

// Occurrences is how many times s appears in what was written.
func (l *LogBuffer) Occurrences(s string) int { return strings.Count(l.String(), s) }

// WaitLines returns every line written once one of them contains want,
// waiting up to five seconds for it (a log line may trail the event a test
// saw); nil if none came.
func (l *LogBuffer) WaitLines(want string) []string {
	deadline := time.Now().Add(5 * time.Second)
	for {
		text := strings.TrimSpace(l.String())
		if strings.Contains(text, want) {
			return strings.Split(text, "\n")
		}
		if time.Now().After(deadline) {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// FreeLoopbackAddr returns "ip:port" that was free a moment ago, on a
// random address of 127/8, for a server the test starts itself a moment
// later. On 127.0.0.1 any other test or process asking for a port could be
// given the same one meanwhile; on an address of its own only a wildcard
// bind of that very port could.
func FreeLoopbackAddr(t testing.TB) string {
	t.Helper()
	for range 10 {
		ip := netip.AddrFrom4([4]byte{127, byte(1 + rand.IntN(254)), byte(rand.IntN(256)), byte(1 + rand.IntN(254))})
		ln, err := net.Listen("tcp", netip.AddrPortFrom(ip, 0).String())
		if err != nil {
			continue
		}
		addr := ln.Addr().String()
		ln.Close()
		return addr
	}
	t.Fatal("no loopback address to listen on")
	return ""
}

// TCPPair returns both ends of a loopback TCP connection, closed when the
// test ends.
func TCPPair(t testing.TB) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-ch
	if server == nil {
		client.Close()
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}
