package httpproxy_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/netip"
	"os"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/policy"
	httpproxy "github.com/gatehouse-dmz/gatehouse/proxy/http"
)

// engineRig is one listener served the way proxy/httpserver.go serves an
// HTTP/1.1 connection (net/http's server reading through the framing
// guard, the listener's header limit, the handler), without TLS, for one
// engine. Every request its backend receives is recorded, parsed and
// written back out (httputil.DumpRequest: headers sorted, the body
// de-chunked and re-chunked), without the per-request id, by the
// fingerprint of the exchange it came from.
type engineRig struct {
	q   *connQueue
	srv *http.Server
	h   *httpproxy.Handler
}

// diffBackend records what reaches it, for every rig in turn.
type diffBackend struct {
	srv  *httptest.Server
	mu   sync.Mutex
	seen map[string]*bytes.Buffer // by the exchange's fingerprint
}

// exchanges numbers the rigs' exchanges: each gets a fingerprint of its
// own, so a request that reaches the backend after its exchange ended (one
// the proxy gave up on after sending it) is never counted for another.
var exchanges atomic.Int64

var (
	requestID   = regexp.MustCompile(`(?m)^X-Gatehouse-Request-Id: .*\r\n`)
	fingerprint = regexp.MustCompile(`(?m)^X-Client-Cert-Fingerprint: .*\r\n`)
)

func newDiffBackend(t testing.TB) *diffBackend {
	b := &diffBackend{seen: map[string]*bytes.Buffer{}}
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		dump, err := httputil.DumpRequest(r, true)
		if err != nil {
			dump = []byte("unreadable request: " + err.Error())
		}
		{
			// Recorded before the answer: the proxy, and so its client,
			// sees the answer only after this.
			fp := r.Header.Get("X-Client-Cert-Fingerprint")
			b.mu.Lock()
			if b.seen[fp] == nil {
				b.seen[fp] = &bytes.Buffer{}
			}
			b.seen[fp].Write(fingerprint.ReplaceAll(requestID.ReplaceAll(dump, nil), []byte("X-Client-Cert-Fingerprint: -\r\n")))
			b.seen[fp].WriteString("\n--\n")
			b.mu.Unlock()
		}
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "ok\n")
	}))
	t.Cleanup(b.srv.Close)
	return b
}

// take returns what the backend saw of the exchange with fingerprint fp.
func (b *diffBackend) take(fp string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var s string
	if buf := b.seen[fp]; buf != nil {
		s = buf.String()
	}
	delete(b.seen, fp)
	return s
}

// scriptConn is a client connection that sends fixed bytes and records
// what the server writes. Once its bytes are read it ends (end of file)
// for the server's reads of the next request or of a body, but not for
// net/http's one-byte background read, which watches for a client going
// away while a handler runs: that one waits for its deadline (net/http
// ends it with one when the handler returns). So every request is
// answered before the client "leaves", whatever the timing, and a request
// cut short still meets the end of its input.
type scriptConn struct {
	fp  string // the fingerprint of the exchange's peer
	in  *bytes.Reader
	out bytes.Buffer

	mu       sync.Mutex
	deadline time.Time
	kick     chan struct{} // closed and replaced when the deadline changes
	closed   chan struct{}
	once     sync.Once
}

func newScriptConn(raw []byte) *scriptConn {
	return &scriptConn{fp: fmt.Sprint(exchanges.Add(1)), in: bytes.NewReader(raw), kick: make(chan struct{}), closed: make(chan struct{})}
}

func (c *scriptConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if c.in.Len() > 0 {
		defer c.mu.Unlock()
		return c.in.Read(p)
	}
	c.mu.Unlock()
	if !inBackgroundRead() {
		return 0, io.EOF
	}
	for {
		c.mu.Lock()
		d, kick := c.deadline, c.kick
		c.mu.Unlock()
		if !d.IsZero() && !time.Now().Before(d) {
			return 0, os.ErrDeadlineExceeded
		}
		var timer <-chan time.Time
		if !d.IsZero() {
			t := time.NewTimer(time.Until(d))
			defer t.Stop()
			timer = t.C
		}
		select {
		case <-kick:
		case <-timer:
		case <-c.closed:
			return 0, io.EOF
		}
	}
}

// inBackgroundRead reports whether net/http's background read is the
// caller. Its one-byte buffer does not tell: the head's read limit can
// leave one byte to read too.
func inBackgroundRead() bool {
	pc := make([]uintptr, 32)
	frames := runtime.CallersFrames(pc[:runtime.Callers(3, pc)])
	for {
		f, more := frames.Next()
		if strings.HasSuffix(f.Function, "(*connReader).backgroundRead") {
			return true
		}
		if !more {
			return false
		}
	}
}

func (c *scriptConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.Write(p)
}

func (c *scriptConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

func (c *scriptConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	close(c.kick)
	c.kick = make(chan struct{})
	c.mu.Unlock()
	return nil
}

func (c *scriptConn) SetDeadline(t time.Time) error    { return c.SetReadDeadline(t) }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }
func (c *scriptConn) LocalAddr() net.Addr              { return &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 443} }
func (c *scriptConn) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(198, 51, 100, 7), Port: 40000}
}

// connQueue is the listener the rig's server accepts script connections
// from, each wrapped in the framing guard as the proxy does for HTTP/1.1.
type connQueue struct {
	conns   chan net.Conn
	done    chan struct{}
	maxHead int
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.conns:
		return httpproxy.NewFramingGuard(c, q.maxHead, nil), nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) Close() error   { return nil }
func (q *connQueue) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 443} }

const rigMaxHead = 8 << 10

func newEngineRig(t testing.TB, engine, backend string) *engineRig {
	lim := policy.Limits{HTTP: policy.HTTPLimits{
		MaxInFlight: 16, MaxHeaderBytes: rigMaxHead, MaxBodyBytes: 64 << 10, BodyBufferBytes: 8 << 10,
		BodyBufferTotal: 8 << 20, BodyBufferTimeout: 5 * time.Second, ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout: 5 * time.Second, BodyReadTimeout: 5 * time.Second, BackendTimeout: 5 * time.Second, Engine: engine,
	}}
	h, err := httpproxy.New(httpproxy.Config{Listener: policy.Listener{Name: "web", Protocol: policy.ProtoHTTPS, Limits: lim,
		Routes: []policy.Route{{Tenant: "acme", Path: "/", Backend: backend}}}})
	if err != nil {
		t.Fatal(err)
	}
	q := &connQueue{conns: make(chan net.Conn), done: make(chan struct{}), maxHead: rigMaxHead}
	peer := certs.Peer{Tenant: "acme", Environment: "default", ServerName: "localhost",
		Source: netip.MustParseAddrPort("198.51.100.7:40000")}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: lim.HTTP.ReadHeaderTimeout,
		IdleTimeout:       lim.HTTP.IdleTimeout,
		MaxHeaderBytes:    httpproxy.HeaderReadLimit(rigMaxHead),
		ErrorLog:          log.New(io.Discard, "", 0),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			p := peer
			p.FingerprintSHA256 = c.(*httpproxy.FramingGuard).Conn.(*scriptConn).fp
			return httpproxy.WithPeer(ctx, p)
		},
	}
	go srv.Serve(q)
	t.Cleanup(func() { close(q.done); srv.Close(); h.Close() })
	return &engineRig{q: q, srv: srv, h: h}
}

// exchange sends raw on a new connection and returns every answer the
// client got (status, whether the connection closes, body; the headers
// hold the date).
func (r *engineRig) exchange(t testing.TB, raw []byte) (answers, fp string) {
	c := newScriptConn(raw)
	r.q.conns <- c
	select {
	case <-c.closed:
	case <-time.After(30 * time.Second):
		t.Fatalf("the server did not finish with %s", clip(string(raw)))
	}
	c.mu.Lock()
	written := bytes.Clone(c.out.Bytes())
	c.mu.Unlock()
	var out bytes.Buffer
	br := bufio.NewReader(bytes.NewReader(written))
	for {
		if _, err := br.Peek(1); err != nil {
			break
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			if err != io.EOF {
				fmt.Fprintf(&out, "unreadable answer: %v\n", err)
			}
			break
		}
		body, err := io.ReadAll(resp.Body)
		fmt.Fprintf(&out, "%d close=%v %q err=%v\n", resp.StatusCode, resp.Close, body, err != nil)
	}
	return out.String(), c.fp
}

// FuzzEnginesDecideAlike: the std and the fast engine, given the same bytes
// from a client, answer with the same statuses and bodies, and send the
// same requests (parsed and written back out) to the backend.
func FuzzEnginesDecideAlike(f *testing.F) {
	be := newDiffBackend(f)
	std := newEngineRig(f, httpproxy.EngineStd, be.srv.URL)
	fast := newEngineRig(f, httpproxy.EngineFast, be.srv.URL)
	for _, s := range engineSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if len(raw) > 96<<10 {
			return
		}
		a, afp := std.exchange(t, raw)
		aSeen := be.take(afp)
		b, bfp := fast.exchange(t, raw)
		bSeen := be.take(bfp)
		// A request is cancelled (499) when the connection's next bytes,
		// read ahead by net/http's background read, are refused by the
		// framing guard: whether that happens before or after the backend
		// answered is timing, under either engine. Such an answer matches
		// the backend's, and what the backend saw is not compared.
		cancelled := strings.Contains(a, "499 ") || strings.Contains(b, "499 ")
		if cancelled {
			a, b = raceless(a), raceless(b)
		}
		if a != b {
			t.Fatalf("answers differ for %s:\nstd:  %s\nfast: %s", clip(string(raw)), clip(a), clip(b))
		}
		if !cancelled && aSeen != bSeen {
			t.Fatalf("backend saw different requests for %s (answers %s):\nstd:\n%s\nfast:\n%s", clip(string(raw)), clip(a), clip(aSeen), clip(bSeen))
		}
	})
}

// raceless writes a cancelled request's answer as the backend's.
func raceless(answers string) string {
	return strings.ReplaceAll(answers, "499 close=false \"\" err=false\n", "200 close=false \"ok\\n\" err=false\n")
}

// clip shortens what a failure shows of s.
func clip(s string) string {
	if len(s) > 600 {
		return fmt.Sprintf("%q…(%d bytes)", s[:600], len(s))
	}
	return fmt.Sprintf("%q", s)
}

// engineSeeds are the framing and header cases of the guard's and the
// proxy's tests: smuggling attempts, malformed heads, and what must pass.
var engineSeeds = []string{
	"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
	"GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-Gatehouse-Tenant: globex\r\nX-Forwarded-For: 192.0.2.9\r\nX-Client-Cert: forged\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloPOST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
	"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
	"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 1\r\n\r\nx",
	"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\nx",
	"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n\tb\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",
	"GET / HTTP/1.1\nHost: x\n\n",
	"GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\n\r\n0\r\n\r\n",
	"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n",
	"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5 ; a=b\r\nhello\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\nX-U: 2\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n folded\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: x\r\nX-Ctl: a\x01b\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: x\r\nX\x00Y: a\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: x\r\nX-Del: a\x7fb\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + string(bytes.Repeat([]byte("a"), 7<<10)) + "\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + string(bytes.Repeat([]byte("a"), 10<<10)) + "\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + string(bytes.Repeat([]byte("a"), 20<<10)) + "\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /d HTTP/1.1\r\nHost: x\r\n\r\n",
	"GET http://x/abs HTTP/1.1\r\nHost: y\r\n\r\n",
	"GET http://evil.example/abs HTTP/1.1\r\nHost: x\r\n\r\n",
	"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
	"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
	"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
	"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 100000\r\n\r\nhello",
	"POST / HTTP/1.1\r\nHost: x\r\nExpect: something-else\r\nContent-Length: 1\r\n\r\nx",
	"GET / HTTP/1.1\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
	"GET / HTTP/1.0\r\n\r\n",
	"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\n",
	"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
	"GET / HTTP/1.2\r\nHost: x\r\n\r\n",
	"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
	"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
	"GET /../etc HTTP/1.1\r\nHost: x\r\n\r\n",
	"GET /a%2f..%2fb;p=1 HTTP/1.1\r\nHost: x\r\n\r\n",
	"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: x\r\nConnection: close, X-Gatehouse-Tenant\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n" + string(bytes.Repeat([]byte("b"), 70000)),
	"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 20000\r\n\r\n" + string(bytes.Repeat([]byte("b"), 20000)),
	"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4e20\r\n" + string(bytes.Repeat([]byte("c"), 20000)) + "\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nshort",
	"GET / HTTP/1.1\r\nHost: x\r\nAccept-Encoding: br\r\nRange: bytes=0-1\r\n\r\nHEAD / HTTP/1.1\r\nHost: x\r\n\r\n",
}
