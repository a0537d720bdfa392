package httpproxy_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	httpproxy "github.com/gatehouse-dmz/gatehouse/proxy/http"
)

// pipeConn is a net.Conn whose reads come from a buffer, in chunks of at
// most step bytes.
type pipeConn struct {
	net.Conn
	r    io.Reader
	step int
}

func (p *pipeConn) Read(b []byte) (int, error) {
	if p.step > 0 && len(b) > p.step {
		b = b[:p.step]
	}
	return p.r.Read(b)
}
func (p *pipeConn) SetReadDeadline(time.Time) error { return nil }

// guardRead reads everything through a FramingGuard and returns what passed
// and the guard's verdict.
func guardRead(in []byte, step int) ([]byte, error) {
	g := httpproxy.NewFramingGuard(&pipeConn{r: bytes.NewReader(in), step: step}, 0, nil)
	var out bytes.Buffer
	buf := make([]byte, 512)
	for {
		n, err := g.Read(buf)
		out.Write(buf[:n])
		if err == io.EOF {
			return out.Bytes(), nil
		}
		if err != nil {
			return out.Bytes(), err
		}
	}
}

func TestFramingGuard(t *testing.T) {
	tests := []struct {
		name string
		in   string
		ok   bool
	}{
		{"simple GET", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", true},
		{"pipelined with bodies", "POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1\r\n\r\n", true},
		{"body that looks like a bad head", "POST / HTTP/1.1\r\nContent-Length: 30\r\n\r\n X: folded\r\nTransfer-Encoding: x\r\n", true},
		{"same Content-Length twice", "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", true},
		{"upgrade then anything", "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05 hello\r\n oops", true},
		{"CL and TE", "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", false},
		{"obs-fold", "GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n", false},
		{"conflicting CL", "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx", false},
		{"negative CL", "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", false},
		{"TE on HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", false},
		{"TE identity", "POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n", false},
		{"bad chunk size", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", false},
		{"chunk overrun", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n0\r\n\r\n", false},
		{"CL+TE in a later request", "GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, step := range []int{0, 1, 7} {
				out, err := guardRead([]byte(tc.in), step)
				if tc.ok && (err != nil || string(out) != tc.in) {
					t.Fatalf("step %d: refused or changed: %v", step, err)
				}
				if !tc.ok {
					if !errors.Is(err, httpproxy.ErrAmbiguousFraming) {
						t.Fatalf("step %d: passed, want a refusal", step)
					}
					if !bytes.HasPrefix([]byte(tc.in), out) {
						t.Fatalf("step %d: passed bytes are not a prefix of the input", step)
					}
				}
			}
		})
	}
}

// FuzzFramingGuard checks the guard never panics, never changes bytes, and
// decides the same whatever the read sizes.
func FuzzFramingGuard(f *testing.F) {
	f.Add([]byte("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), 3)
	f.Add([]byte("POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"), 1)
	f.Add([]byte("GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n"), 2)
	f.Fuzz(func(t *testing.T, in []byte, step int) {
		step = 1 + (step&0xff)%64
		whole, err1 := guardRead(in, 0)
		parts, err2 := guardRead(in, step)
		if (err1 == nil) != (err2 == nil) {
			t.Fatalf("verdict depends on read size: %v / %v", err1, err2)
		}
		if !bytes.HasPrefix(in, whole) || !bytes.HasPrefix(in, parts) {
			t.Fatal("guard changed the bytes")
		}
		if err1 == nil && !bytes.Equal(whole, in) {
			t.Fatal("accepted stream truncated")
		}
	})
}

// TestFramingGuardKeepsNoCopyOfTheHead: of a long header line the guard
// keeps only the start it reads, never the line: it held a copy of every
// line up to its end (2.2 times the head per connection with net/http's).
func TestFramingGuardKeepsNoCopyOfTheHead(t *testing.T) {
	head := "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("b", 1<<20)
	for _, limit := range []int{0, 2 << 20} {
		g := httpproxy.NewFramingGuard(&pipeConn{r: strings.NewReader(head), step: 32 << 10}, limit, nil)
		buf := make([]byte, 32<<10)
		for {
			if _, err := g.Read(buf); err != nil {
				break
			}
			if kept := httpproxy.GuardKept(g); kept > 4<<10 {
				t.Fatalf("limit %d: the guard holds %d bytes of an unfinished line", limit, kept)
			}
		}
	}
}

// TestFramingGuardHeadLimit: a request head may run 4 KiB past the
// listener's limit (net/http's own slack, so the handler judges it and
// answers 431 with an access log line); past that the guard ends the
// connection as the bytes arrive, whether the head is one field or many,
// and each request of a connection has the whole limit.
func TestFramingGuardHeadLimit(t *testing.T) {
	const limit = 4 << 10
	field := func(n int) string { return "X-F: " + strings.Repeat("f", n) + "\r\n" }
	start := "GET / HTTP/1.1\r\nHost: x\r\n"
	tests := []struct {
		name string
		in   string
		ok   bool
	}{
		{"at the slack", start + field(2*limit-len(start)-7-2) + "\r\n", true},
		{"one long field", start + field(2*limit), false},
		{"many fields", start + strings.Repeat(field(100), 2*limit/100), false},
		{"unfinished", start + "X-F: " + strings.Repeat("f", 2*limit), false},
		{"each request its own", strings.Repeat(start+field(limit-100)+"\r\n", 4), true},
		{"after a body", "POST / HTTP/1.1\r\nContent-Length: 9000\r\n\r\n" + strings.Repeat("b", 9000) + start + "\r\n", true},
		{"a long Content-Length", "POST / HTTP/1.1\r\nContent-Length: " + strings.Repeat(" ", 300) + "1\r\n\r\nx", false},
		{"a long Transfer-Encoding", "POST / HTTP/1.1\r\nTransfer-Encoding: " + strings.Repeat(" ", 300) + "chunked\r\n\r\n0\r\n\r\n", false},
		{"a long request line, HTTP/1.0", "POST /" + strings.Repeat("a", 1000) + " HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", false},
		{"a long request line", "POST /" + strings.Repeat("a", 1000) + " HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, step := range []int{0, 1, 7, 4096} {
				g := httpproxy.NewFramingGuard(&pipeConn{r: strings.NewReader(tc.in), step: step}, limit, nil)
				out, err := io.ReadAll(g)
				if tc.ok && (err != nil || string(out) != tc.in) {
					t.Fatalf("step %d: refused or changed: %v", step, err)
				}
				if !tc.ok && err == nil {
					t.Fatalf("step %d: passed, want a refusal", step)
				}
				if !bytes.HasPrefix([]byte(tc.in), out) {
					t.Fatalf("step %d: passed bytes are not a prefix of the input", step)
				}
			}
		})
	}
}
