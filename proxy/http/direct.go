package httpproxy

import (
	"bufio"
	"compress/gzip"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The HTTP engines a listener may serve HTTP/1.1 with (limits.http.engine).
const (
	// EngineStd sends each request to its backend through net/http's
	// Transport, which runs every exchange on two goroutines of its own
	// (the backend connection's read and write loops).
	EngineStd = "std"
	// EngineFast sends it through a directTransport: the exchange runs on
	// the goroutine that serves the client's request.
	EngineFast = "fast"
)

// directTransport is the http.RoundTripper of one backend under the fast
// engine. It writes the request and reads the response on the caller's
// goroutine, over a connection it takes from its own idle pool (or dials)
// and owns for the exchange: no read or write loop goroutines, no channel
// handoffs between them. It sends the same bytes as net/http's Transport
// (the request is written by the same net/http code, Request.Write) and
// reads the response with the same parser (http.ReadResponse), and it
// keeps the Transport's behaviour that clients and backends can see: gzip
// asked for and undone when the client asked for no encoding, a request
// retried on a new connection when a kept-alive one turns out closed
// before any answer (only when it may be sent twice), 1xx answers passed
// to the ReverseProxy, a 101's connection returned as the body, the
// response-header timeout.
type directTransport struct {
	addr          string // host:port
	tls           *tls.Config
	dial          func(ctx context.Context, network, addr string) (net.Conn, error)
	headerTimeout time.Duration
	idleTimeout   time.Duration // directIdleTimeout when it was made

	mu     sync.Mutex
	idle   []*backendConn // most recently used last
	closed bool
	sweep  *time.Timer // closes connections idle past directIdleTimeout; nil when none are idle
}

// Bounds of the direct transport's pool and of the exchanges it writes
// synchronously.
// directIdleTimeout closes a backend connection idle this long, as the
// Transport's IdleConnTimeout (a variable for the tests).
var directIdleTimeout = 90 * time.Second

const (
	// syncBodyMax: a request body of known length up to this is written
	// before the response is read, on the same goroutine; a larger one, or
	// one of unknown length, is written by a goroutine of its own while the
	// response is read, so a backend that answers early (413) without
	// reading it cannot stall the exchange.
	syncBodyMax = 16 << 10
	// maxResponseHead bounds one response head from a backend (each 1xx
	// head, and the final one), as the Transport's default
	// MaxResponseHeaderBytes does under the std engine: a backend whose
	// head does not end gets a 502, not the proxy's memory.
	maxResponseHead = 10 << 20
)

// errResponseHead is a backend's response head over maxResponseHead.
var errResponseHead = errors.New("backend response head over 10 MiB")

// headLimit is the reader under a backend connection's bufio.Reader: while
// armed, it hands out at most left bytes, then errResponseHead.
type headLimit struct {
	r     io.Reader
	armed bool
	left  int64
}

func (l *headLimit) Read(p []byte) (int, error) {
	if !l.armed {
		return l.r.Read(p)
	}
	if l.left <= 0 {
		return 0, errResponseHead
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	return n, err
}

func (l *headLimit) arm(n int64) { l.armed, l.left = true, n }

// backendConn is one kept-alive connection to a backend.
type backendConn struct {
	t    *directTransport
	c    net.Conn
	tcp  syscall.Conn // the socket under c, for the liveness probe
	lim  *headLimit   // under br
	br   *bufio.Reader
	bw   *bufio.Writer
	used time.Time // when it went idle
}

func newDirectTransport(addr string, tc *tls.Config, dial func(context.Context, string, string) (net.Conn, error), headerTimeout time.Duration) *directTransport {
	return &directTransport{addr: addr, tls: tc, dial: dial, headerTimeout: headerTimeout, idleTimeout: directIdleTimeout}
}

// CloseIdleConnections closes the idle connections; connections in use
// are closed when their exchange ends.
func (t *directTransport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle, t.closed = nil, true
	if t.sweep != nil {
		t.sweep.Stop()
	}
	t.mu.Unlock()
	for _, bc := range idle {
		bc.c.Close()
	}
}

// get returns an idle connection that is still open, or nil.
func (t *directTransport) get(now time.Time) *backendConn {
	for {
		t.mu.Lock()
		n := len(t.idle)
		if n == 0 {
			t.mu.Unlock()
			return nil
		}
		bc := t.idle[n-1]
		t.idle[n-1] = nil
		t.idle = t.idle[:n-1]
		t.mu.Unlock()
		if now.Sub(bc.used) < t.idleTimeout && bc.alive() {
			return bc
		}
		bc.c.Close()
	}
}

// put makes bc idle, or closes it when the pool is full or closed.
func (t *directTransport) put(bc *backendConn) {
	bc.used = time.Now()
	t.mu.Lock()
	if !t.closed && len(t.idle) < MaxIdlePerBackend {
		t.idle = append(t.idle, bc)
		if t.sweep == nil {
			// One timer per backend, not per request.
			t.sweep = time.AfterFunc(t.idleTimeout, t.closeExpired)
		}
		t.mu.Unlock()
		return
	}
	t.mu.Unlock()
	bc.c.Close()
}

// closeExpired closes the connections idle for directIdleTimeout, as the
// Transport does, so an idle backend does not keep descriptors for ever,
// and runs again while some are idle.
func (t *directTransport) closeExpired() {
	now := time.Now()
	t.mu.Lock()
	var expired []*backendConn
	keep := t.idle[:0]
	for _, bc := range t.idle {
		if now.Sub(bc.used) >= t.idleTimeout {
			expired = append(expired, bc)
		} else {
			keep = append(keep, bc)
		}
	}
	clear(t.idle[len(keep):])
	t.idle = keep
	t.sweep = nil
	if len(keep) > 0 && !t.closed {
		t.sweep = time.AfterFunc(t.idleTimeout-now.Sub(keep[0].used), t.closeExpired)
	}
	t.mu.Unlock()
	for _, bc := range expired {
		bc.c.Close()
	}
}

// alive peeks at the idle socket without blocking: a backend that closed
// it (its own idle timeout, a restart) shows as end of file, and the
// connection is not used. The Transport learns the same from the read it
// keeps pending on every idle connection.
func (bc *backendConn) alive() bool {
	if bc.br.Buffered() > 0 {
		return false // bytes nobody asked for: the framing is lost
	}
	rc, err := bc.tcp.SyscallConn()
	if err != nil {
		return false
	}
	ok := false
	var b [1]byte
	rc.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case err == syscall.EAGAIN:
			ok = true // open, nothing to read
		case err == nil && n > 0:
			// Unread bytes: on TLS a session ticket or an alert the TLS
			// layer reads next; on plain HTTP an answer nobody asked for.
			ok = bc.t.tls != nil
		}
		return true
	})
	return ok
}

func (t *directTransport) dialConn(ctx context.Context) (*backendConn, error) {
	var sock syscall.Conn
	c, err := t.dial(context.WithValue(ctx, sockKey{}, &sock), "tcp", t.addr)
	if err != nil {
		return nil, err
	}
	if sock == nil {
		c.Close()
		return nil, errors.New("no socket under the backend connection")
	}
	if t.tls != nil {
		tc := tls.Client(c, t.tls)
		hctx, cancel := context.WithTimeout(ctx, dialTimeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			c.Close()
			return nil, err
		}
		c = tc
	}
	lim := &headLimit{r: c}
	return &backendConn{t: t, c: c, tcp: sock, lim: lim, br: bufio.NewReaderSize(lim, 4<<10), bw: bufio.NewWriterSize(c, 4<<10)}, nil
}

// sockKey carries, in the context of a dial, where the dialer puts the
// socket it made: the descriptor budget wraps the connection it returns.
type sockKey struct{}

// socketDial wraps the innermost dial so that the socket it returns is
// recorded for the liveness probe.
func socketDial(dial func(context.Context, string, string) (net.Conn, error)) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if p, ok := ctx.Value(sockKey{}).(*syscall.Conn); ok && err == nil {
			if sc, ok := c.(syscall.Conn); ok {
				*p = sc
			}
		}
		return c, err
	}
}

// RoundTrip sends req on a kept-alive connection, or a new one, and reads
// the response head; the body is read from the connection as the caller
// reads it, and the connection goes back to the pool at its end.
func (t *directTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	trace := httptrace.ContextClientTrace(ctx)
	gzipped := false
	if req.Header.Get("Accept-Encoding") == "" && req.Header.Get("Range") == "" && req.Method != http.MethodHead {
		// As the Transport: ask for gzip, and undo it for the client.
		gzipped = true
		req.Header.Set("Accept-Encoding", "gzip")
		defer req.Header.Del("Accept-Encoding")
	}
	for {
		bc := t.get(time.Now())
		reused := bc != nil
		if bc == nil {
			var err error
			if bc, err = t.dialConn(ctx); err != nil {
				return nil, err
			}
		}
		if trace != nil && trace.GotConn != nil {
			trace.GotConn(httptrace.GotConnInfo{Conn: bc.c, Reused: reused})
		}
		resp, sent, err := bc.exchange(req, trace)
		if err == nil {
			if gzipped && strings.EqualFold(resp.Header.Get("Content-Encoding"), "gzip") && resp.Body != http.NoBody {
				resp.Header.Del("Content-Encoding")
				resp.Header.Del("Content-Length")
				resp.ContentLength = -1
				resp.Uncompressed = true
				resp.Body = &gunzipBody{body: resp.Body}
			}
			return resp, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		// A kept-alive connection the backend closed as the request went
		// out: the Transport tries a new one when nothing was answered
		// and the request may be sent twice.
		if reused && !sent && replayable(req) {
			continue
		}
		return nil, err
	}
}

// replayable is the Transport's rule for sending a request again.
func replayable(req *http.Request) bool {
	if req.Body != nil && req.Body != http.NoBody && req.GetBody == nil {
		return false
	}
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, key := req.Header["Idempotency-Key"]
	_, xkey := req.Header["X-Idempotency-Key"]
	return key || xkey
}

// exchange writes req and reads the response head on bc. sent reports
// whether any of the response arrived (then the request must not be sent
// again). On an error bc is closed.
func (bc *backendConn) exchange(req *http.Request, trace *httptrace.ClientTrace) (_ *http.Response, sent bool, _ error) {
	ctx := req.Context()
	stop := context.AfterFunc(ctx, func() { bc.c.SetDeadline(time.Unix(1, 0)) })
	fail := func(err error) (*http.Response, bool, error) {
		stop()
		bc.c.Close()
		return nil, sent, err
	}
	var wrote chan error
	hasBody := req.Body != nil && req.Body != http.NoBody
	if !hasBody || req.ContentLength >= 0 && req.ContentLength <= syncBodyMax {
		if err := req.Write(bc.bw); err != nil {
			return fail(err)
		}
		if err := bc.bw.Flush(); err != nil {
			return fail(err)
		}
	} else {
		wrote = make(chan error, 1)
		// The writer gets a header of its own: RoundTrip takes back the
		// Accept-Encoding it added once the answer is in, which may be
		// before this goroutine is done.
		wreq := req.WithContext(ctx)
		wreq.Header = req.Header.Clone()
		go func() {
			err := wreq.Write(bc.bw)
			if err == nil {
				err = bc.bw.Flush()
			}
			wrote <- err
		}()
	}
	if bc.t.headerTimeout > 0 {
		bc.c.SetReadDeadline(time.Now().Add(bc.t.headerTimeout))
	}
	var resp *http.Response
	bc.lim.arm(maxResponseHead)
	for {
		if _, err := bc.br.Peek(1); err != nil {
			if wrote != nil {
				bc.c.Close()
				<-wrote
			}
			return fail(err)
		}
		sent = true
		r, err := http.ReadResponse(bc.br, req)
		if err != nil {
			if wrote != nil {
				bc.c.Close()
				<-wrote
			}
			return fail(err)
		}
		if r.StatusCode >= 100 && r.StatusCode < 200 && r.StatusCode != http.StatusSwitchingProtocols {
			if trace != nil && trace.Got1xxResponse != nil {
				if err := trace.Got1xxResponse(r.StatusCode, textproto.MIMEHeader(r.Header)); err != nil {
					return fail(err)
				}
				bc.lim.arm(maxResponseHead) // as the Transport: each head passed on is bounded alone
			}
			continue
		}
		resp = r
		break
	}
	bc.lim.armed = false // the body is bounded by its own limits
	bc.c.SetReadDeadline(time.Time{})
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// The connection is the backend's side of the tunnel now.
		if wrote != nil {
			if err := <-wrote; err != nil {
				return fail(err)
			}
		}
		stop()
		resp.Body = &switchedConn{bc: bc}
		return resp, true, nil
	}
	resp.Body = &directBody{bc: bc, body: resp.Body, stop: stop, wrote: wrote, reuse: !resp.Close && !req.Close}
	return resp, true, nil
}

// directBody is a response body read straight from the backend connection;
// at its end, the connection goes back to the pool when its framing allows.
type directBody struct {
	bc    *backendConn
	body  io.ReadCloser
	stop  func() bool
	wrote chan error
	reuse bool
	done  bool
}

func (b *directBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.body.Read(p)
	if err == io.EOF {
		b.finish(true)
	} else if err != nil {
		b.finish(false)
	}
	return n, err
}

func (b *directBody) Close() error {
	b.finish(false)
	return nil
}

// finish ends the exchange once: the connection back to the pool after a
// complete body, closed otherwise.
func (b *directBody) finish(complete bool) {
	if b.done {
		return
	}
	b.done = true
	cancelled := !b.stop()
	ok := complete && b.reuse && !cancelled
	if b.wrote != nil {
		if !ok {
			b.bc.c.Close()
		}
		if err := <-b.wrote; err != nil {
			ok = false
		}
	}
	if ok {
		b.bc.t.put(b.bc)
		return
	}
	b.bc.c.Close()
}

// switchedConn is the body of a 101: the backend connection itself, with
// what its reader holds already, as ReverseProxy wants it.
type switchedConn struct{ bc *backendConn }

func (s *switchedConn) Read(p []byte) (int, error)  { return s.bc.br.Read(p) }
func (s *switchedConn) Write(p []byte) (int, error) { return s.bc.c.Write(p) }
func (s *switchedConn) Close() error                { return s.bc.c.Close() }

// gunzipBody undoes the gzip the transport asked for.
type gunzipBody struct {
	body io.ReadCloser
	zr   *gzip.Reader
	err  error
}

func (g *gunzipBody) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	if g.zr == nil {
		if g.zr, g.err = gzip.NewReader(g.body); g.err != nil {
			return 0, g.err
		}
	}
	return g.zr.Read(p)
}

func (g *gunzipBody) Close() error { return g.body.Close() }
