package httpproxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
)

// EngineDirect is the fast engine with its server half: HTTP/1.1 client
// connections are served by ConnServer on their own goroutine instead of
// net/http's server, and requests reach their backends as under
// EngineFast. HTTP/2 stays on net/http.
const EngineDirect = "direct"

// ConnServer serves the HTTP/1.1 requests of one client connection on the
// caller's goroutine, as net/http's server would, minus what a proxy does
// not need: no background read per request (a client that goes away is
// noticed when its answer is written), no goroutine per connection of its
// own. It parses requests with net/http's own parser (http.ReadRequest),
// applies the server's checks that parser leaves to its caller (Host,
// header names and values, protocol version, Expect), and writes answers
// with net/http's framing rules: the same status line, headers (Date, a
// sniffed Content-Type, Content-Length or chunked, Connection) and body
// bytes, so that a client cannot tell the two apart (the differential
// fuzz test compares them).
type ConnServer struct {
	Handler http.Handler
	// MaxHeaderBytes bounds what is read of a request head, as the
	// server's MaxHeaderBytes: HeaderReadLimit of the listener's limit.
	MaxHeaderBytes    int
	ReadHeaderTimeout time.Duration
	IdleTimeout       time.Duration
	Logger            *slog.Logger // panics of the handler; nil: discarded
}

// Bounds net/http's server applies, kept here.
const (
	// headerReadSlack is what net/http reads past MaxHeaderBytes before
	// it answers 431.
	headerReadSlack = 4096
	// bufferBeforeChunking is how much of an answer is held back so that
	// a short one gets a Content-Length instead of chunks.
	bufferBeforeChunking = 2048
	// maxPostHandlerRead is how much of an unread request body is read
	// and dropped after the answer to keep the connection.
	maxPostHandlerRead = 256 << 10
)

// ServeConn serves c until the client closes it, a request ends it, or
// stop is done (between requests: an idle connection is ended at once).
// It closes c.
func (s *ConnServer) ServeConn(ctx context.Context, c net.Conn, stop context.Context) {
	sc := &serverConn{s: s, c: c, remote: c.RemoteAddr().String()}
	sc.lr.c = c
	sc.br = bufio.NewReaderSize(&sc.lr, 4<<10)
	sc.bw = bufio.NewWriterSize(errWriter{sc}, 4<<10)
	if stop != nil {
		defer context.AfterFunc(stop, func() {
			if sc.idle.Load() {
				c.SetReadDeadline(time.Unix(1, 0))
			}
		})()
	}
	defer func() {
		if !sc.hijacked {
			c.Close()
		}
	}()
	if d := s.ReadHeaderTimeout; d > 0 {
		c.SetReadDeadline(time.Now().Add(d))
	}
	for first := true; ; first = false {
		if !first {
			sc.idle.Store(true)
			if stop != nil && stop.Err() != nil {
				return
			}
			if d := s.IdleTimeout; d > 0 {
				c.SetReadDeadline(time.Now().Add(d))
			}
			if _, err := sc.br.Peek(4); err != nil {
				return
			}
			sc.idle.Store(false)
			c.SetReadDeadline(time.Time{})
			if d := s.ReadHeaderTimeout; d > 0 {
				c.SetReadDeadline(time.Now().Add(d))
			}
		}
		w, err := sc.readRequest(ctx)
		if stop != nil && stop.Err() != nil {
			return
		}
		if err != nil {
			sc.refuseRequest(err)
			return
		}
		if !sc.serve(w) {
			return
		}
	}
}

// serverConn is one client connection served by a ConnServer.
type serverConn struct {
	s          *ConnServer
	c          net.Conn
	remote     string
	lr         limitReader
	br         *bufio.Reader
	bw         *bufio.Writer
	werr       error // the first write error: the connection is done
	lastMethod string
	idle       atomic.Bool // waiting for a request: a stop ends it
	hijacked   bool
	res        response // reused for every request
}

// errWriter writes to the connection and remembers its first failure.
type errWriter struct{ sc *serverConn }

func (e errWriter) Write(p []byte) (int, error) {
	n, err := e.sc.c.Write(p)
	if err != nil && e.sc.werr == nil {
		e.sc.werr = err
	}
	return n, err
}

// limitReader bounds what a request head may read from the connection,
// as net/http's connReader does.
type limitReader struct {
	c      net.Conn
	remain int64 // < 0: no bound
	hit    bool
	rec    []byte // what the head read, while bounded
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.remain == 0 {
		l.hit = true
		return 0, errHeadLimit
	}
	if l.remain > 0 && int64(len(p)) > l.remain {
		p = p[:l.remain]
	}
	n, err := l.c.Read(p)
	if l.remain > 0 {
		l.remain -= int64(n)
		l.rec = append(l.rec, p[:n]...)
	}
	return n, err
}

// hostFields finds the Host fields of the head just read: http.ReadRequest
// drops them from the header, and net/http's server judges them.
func (sc *serverConn) hostFields(buffered int) (n int, first string) {
	head := sc.lr.rec[:max(0, len(sc.lr.rec)-buffered)]
	for len(head) > 0 {
		i := bytes.IndexByte(head, '\n')
		if i < 0 {
			break
		}
		line := head[:i]
		head = head[i+1:]
		if len(line) >= 5 && strings.EqualFold(string(line[:5]), "host:") {
			if n == 0 {
				first = strings.TrimRight(strings.TrimLeft(string(line[5:]), " \t"), " \t\r")
			}
			n++
		}
	}
	return n, first
}

var (
	errHeadLimit = errors.New("request head too large")
	// errRequest is a request the server refuses with 400 and the text.
	errMissingHost    = badRequest("missing required Host header")
	errMalformedHost  = badRequest("malformed Host header")
	errHeaderName     = badRequest("invalid header name")
	errHeaderValue    = badRequest("invalid header value")
	errVersion        = errors.New("unsupported protocol version")
	crlf              = []byte("\r\n")
	errWriteAfterDone = errors.New("http: response written after the handler returned")
)

type badRequest string

func (b badRequest) Error() string { return string(b) }

// readRequest reads and checks the next request, as net/http's server.
func (sc *serverConn) readRequest(ctx context.Context) (*response, error) {
	sc.lr.remain = int64(sc.s.MaxHeaderBytes) + headerReadSlack
	if sc.s.MaxHeaderBytes <= 0 {
		sc.lr.remain = http.DefaultMaxHeaderBytes + headerReadSlack
	}
	sc.lr.hit = false
	sc.lr.rec = append(sc.lr.rec[:0], peekAll(sc.br)...)
	if sc.lastMethod == http.MethodPost {
		// A client's stray CRLF after a POST body, as net/http allows.
		peek, _ := sc.br.Peek(4)
		n := 0
		for n < len(peek) && (peek[n] == '\r' || peek[n] == '\n') {
			n++
		}
		sc.br.Discard(n)
	}
	req, err := http.ReadRequest(sc.br)
	if err != nil {
		if sc.lr.hit {
			return nil, errHeadLimit
		}
		return nil, err
	}
	// HTTP/2's preface as a request: answered, then the connection ends.
	h2Preface := req.ProtoMajor == 2 && req.ProtoMinor == 0 && req.Method == "PRI" && req.RequestURI == "*"
	if req.ProtoMajor != 1 && !h2Preface {
		return nil, errVersion
	}
	sc.lastMethod = req.Method
	sc.lr.remain = -1
	sc.c.SetReadDeadline(time.Time{})
	hosts, host := sc.hostFields(sc.br.Buffered())
	if cap(sc.lr.rec) > 8<<10 {
		sc.lr.rec = nil // an idle connection keeps no large head
	}
	if req.ProtoAtLeast(1, 1) && hosts == 0 && !h2Preface && req.Method != http.MethodConnect {
		return nil, errMissingHost
	}
	if hosts == 1 && !httpguts.ValidHostHeader(host) {
		return nil, errMalformedHost
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return nil, errHeaderName
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return nil, errHeaderValue
			}
		}
	}
	delete(req.Header, "Host")
	req.RemoteAddr = sc.remote
	w := &sc.res
	*w = response{sc: sc, contentLength: -1, handlerHeader: w.handlerHeader, bufw: w.bufw}
	clear(w.handlerHeader)
	if w.handlerHeader == nil {
		w.handlerHeader = make(http.Header)
	}
	w.cw.res = w
	if w.bufw == nil {
		w.bufw = bufio.NewWriterSize(&w.cw, bufferBeforeChunking)
	} else {
		w.bufw.Reset(&w.cw)
	}
	w.wants10KeepAlive = !req.ProtoAtLeast(1, 1) && hasToken(req.Header["Connection"], "keep-alive")
	w.wantsClose = req.Close
	w.closeAfterReply = h2Preface
	if req.Body != nil && req.Body != http.NoBody {
		tb := &trackBody{rc: req.Body, remain: req.ContentLength}
		w.reqBody = tb
		req.Body = tb
	}
	w.ctx, w.cancel = context.WithCancel(ctx)
	w.req = req.WithContext(w.ctx)
	return w, nil
}

// peekAll is what b holds already.
func peekAll(b *bufio.Reader) []byte {
	p, _ := b.Peek(b.Buffered())
	return p
}

// refuseRequest answers a request that could not be read as net/http's
// server does, or closes the connection without a word.
func (sc *serverConn) refuseRequest(err error) {
	const errorHeaders = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
	var br badRequest
	switch {
	case errors.Is(err, errHeadLimit):
		const publicErr = "431 Request Header Fields Too Large"
		io.WriteString(sc.c, "HTTP/1.1 "+publicErr+errorHeaders+publicErr)
		sc.closeWriteAndWait()
	case isUnsupportedTE(err):
		fmt.Fprintf(sc.c, "HTTP/1.1 %d %s%sUnsupported transfer encoding", http.StatusNotImplemented, http.StatusText(http.StatusNotImplemented), errorHeaders)
	case isCommonNetReadError(err):
	case errors.Is(err, errVersion):
		const code = http.StatusHTTPVersionNotSupported
		fmt.Fprintf(sc.c, "HTTP/1.1 %d %s: %s%s%d %s: %s", code, http.StatusText(code), err, errorHeaders, code, http.StatusText(code), err)
	case errors.As(err, &br):
		io.WriteString(sc.c, "HTTP/1.1 400 Bad Request: "+string(br)+errorHeaders+"400 Bad Request: "+string(br))
	default:
		io.WriteString(sc.c, "HTTP/1.1 400 Bad Request"+errorHeaders+"400 Bad Request")
	}
}

// isUnsupportedTE reports the parser's refusal of a transfer coding (its
// error type is not exported).
func isUnsupportedTE(err error) bool {
	return strings.HasPrefix(err.Error(), "unsupported transfer encoding")
}

// isCommonNetReadError is net/http's list of read errors it ends a
// connection on without answering.
func isCommonNetReadError(err error) bool {
	if err == io.EOF {
		return true
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return true
	}
	oe, ok := err.(*net.OpError)
	return ok && oe.Op == "read"
}

// closeWriteAndWait half-closes the connection and gives the client a
// moment to read the answer before the close, as net/http does.
func (sc *serverConn) closeWriteAndWait() {
	sc.bw.Flush()
	if cw, ok := sc.c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	time.Sleep(500 * time.Millisecond)
}

// serve runs the handler on w's request and reports whether the
// connection may carry another.
func (sc *serverConn) serve(w *response) (keep bool) {
	req := w.req
	if expectsContinue(req) {
		if req.ProtoAtLeast(1, 1) && req.ContentLength != 0 {
			w.canWriteContinue = true
		}
	} else if req.Header.Get("Expect") != "" {
		w.handlerHeader.Set("Connection", "close")
		w.WriteHeader(http.StatusExpectationFailed)
		w.finish()
		return false
	}
	if w.canWriteContinue {
		req.Body = &continueBody{tb: w.reqBody, w: w}
	}
	defer w.cancel()
	if !sc.runHandler(w, req) {
		return false
	}
	w.cancel()
	if sc.hijacked {
		return false
	}
	w.finish()
	if !w.shouldReuse() {
		if w.bodyLimitHit {
			sc.closeWriteAndWait()
		}
		return false
	}
	return true
}

// runHandler calls the handler and reports whether it returned; a panic
// ends the connection (http.ErrAbortHandler silently).
func (sc *serverConn) runHandler(w *response, req *http.Request) (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			ok = false
			if p != http.ErrAbortHandler && sc.s.Logger != nil {
				sc.s.Logger.Error("panic serving a request", "remote", sc.remote, "panic", fmt.Sprint(p))
			}
		}
	}()
	if req.RequestURI == "*" && req.Method == http.MethodOptions {
		// As net/http's server: answered for the server, not a backend.
		w.Header().Set("Content-Length", "0")
		if req.ContentLength != 0 {
			io.Copy(io.Discard, http.MaxBytesReader(w, req.Body, 4<<10))
		}
		return true
	}
	sc.s.Handler.ServeHTTP(w, req)
	return true
}

func expectsContinue(r *http.Request) bool {
	return hasToken(r.Header["Expect"], "100-continue")
}
