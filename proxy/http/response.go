package httpproxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// response is the http.ResponseWriter of a ConnServer's request. Its
// framing decisions are net/http's server's (see chunkWriter.writeHeader
// there): the same bytes reach the client.
type response struct {
	sc            *serverConn
	req           *http.Request
	ctx           context.Context
	cancel        context.CancelFunc
	reqBody       *trackBody // nil: no body
	handlerHeader http.Header
	sent          http.Header // the header as WriteHeader saw it, when trailers follow
	bufw          *bufio.Writer
	cw            chunkWriter

	wroteHeader      bool
	status           int
	contentLength    int64 // -1: unknown
	written          int64
	handlerDone      bool
	closeAfterReply  bool
	bodyLimitHit     bool
	wants10KeepAlive bool
	wantsClose       bool
	continueMu       sync.Mutex // the body may be read on another goroutine
	canWriteContinue bool
	trailers         []string
	clenBuf          [20]byte
	dateBuf          [len(http.TimeFormat)]byte
}

func (w *response) Header() http.Header { return w.handlerHeader }

func (w *response) WriteHeader(code int) {
	if w.sc.hijacked || w.wroteHeader {
		return
	}
	if code < 100 || code > 999 {
		panic("invalid WriteHeader code " + strconv.Itoa(code))
	}
	if code < 101 || code > 199 {
		w.disableWriteContinue()
	}
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		bw := w.sc.bw
		writeStatusLine(bw, w.req.ProtoAtLeast(1, 1), code)
		w.handlerHeader.WriteSubset(bw, excludedNoBody)
		bw.Write(crlf)
		bw.Flush()
		return
	}
	w.wroteHeader = true
	w.status = code
	if _, ok := w.handlerHeader["Trailer"]; ok {
		// Trailers are set in the header after this: what is sent now is
		// the header as it is now.
		w.sent = w.handlerHeader.Clone()
	}
	if cl := w.handlerHeader.Get("Content-Length"); cl != "" {
		v, err := strconv.ParseInt(cl, 10, 64)
		if err == nil && v >= 0 {
			w.contentLength = v
		} else {
			w.handlerHeader.Del("Content-Length")
		}
	}
}

func (w *response) Write(p []byte) (int, error) {
	if w.sc.hijacked {
		return 0, http.ErrHijacked
	}
	if w.handlerDone {
		return 0, errWriteAfterDone
	}
	w.disableWriteContinue()
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if !bodyAllowedForStatus(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	w.written += int64(len(p))
	if w.contentLength != -1 && w.written > w.contentLength {
		return 0, http.ErrContentLength
	}
	return w.bufw.Write(p)
}

func (w *response) WriteString(s string) (int, error) {
	// The header and framing rules are Write's; a string is rare here.
	return w.Write([]byte(s))
}

// FlushError sends what is buffered, header first.
func (w *response) FlushError() error {
	if w.sc.hijacked {
		return http.ErrHijacked
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if err := w.bufw.Flush(); err != nil {
		return err
	}
	if !w.cw.wroteHeader {
		w.cw.writeHeader(nil)
	}
	return w.sc.bw.Flush()
}

func (w *response) Flush() { w.FlushError() }

// SetReadDeadline and SetWriteDeadline are the connection's, for
// http.ResponseController.
func (w *response) SetReadDeadline(t time.Time) error  { return w.sc.c.SetReadDeadline(t) }
func (w *response) SetWriteDeadline(t time.Time) error { return w.sc.c.SetWriteDeadline(t) }

// Hijack hands the connection over (a protocol switch), with what was
// read of it already.
func (w *response) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.sc.hijacked {
		return nil, nil, http.ErrHijacked
	}
	if w.wroteHeader {
		w.cw.flush()
	}
	if err := w.sc.bw.Flush(); err != nil {
		return nil, nil, err
	}
	w.sc.hijacked = true
	w.sc.idle.Store(false)
	return w.sc.c, bufio.NewReadWriter(w.sc.br, bufio.NewWriter(w.sc.c)), nil
}

// finish ends the answer: net/http's finishRequest.
func (w *response) finish() {
	w.handlerDone = true
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	w.bufw.Flush()
	w.cw.close()
	w.sc.bw.Flush()
	if w.reqBody != nil {
		w.reqBody.Close()
	}
}

func (w *response) disableWriteContinue() {
	w.continueMu.Lock()
	w.canWriteContinue = false
	w.continueMu.Unlock()
}

func (w *response) shouldReuse() bool {
	switch {
	case w.closeAfterReply:
		return false
	case w.req.Method != http.MethodHead && w.contentLength != -1 && bodyAllowedForStatus(w.status) && w.contentLength != w.written:
		return false
	case w.sc.werr != nil:
		return false
	case w.reqBody != nil && w.reqBody.closedEarly():
		return false
	}
	return true
}

// requestTooLarge is called when the rest of a request body is too much
// to read and drop: the connection closes after the answer.
func (w *response) requestTooLarge() {
	w.closeAfterReply = true
	w.bodyLimitHit = true
}

// chunkWriter writes the answer to the connection: the header at its
// first write, then the body, in chunks when its length is unknown.
type chunkWriter struct {
	res         *response
	wroteHeader bool
	chunking    bool
}

func (cw *chunkWriter) Write(p []byte) (int, error) {
	if !cw.wroteHeader {
		cw.writeHeader(p)
	}
	if cw.res.req.Method == http.MethodHead {
		return len(p), nil
	}
	bw := cw.res.sc.bw
	if cw.chunking {
		var b [20]byte
		bw.Write(strconv.AppendUint(b[:0], uint64(len(p)), 16))
		bw.Write(crlf)
	}
	n, err := bw.Write(p)
	if cw.chunking && err == nil {
		_, err = bw.Write(crlf)
	}
	return n, err
}

func (cw *chunkWriter) flush() {
	if !cw.wroteHeader {
		cw.writeHeader(nil)
	}
	cw.res.sc.bw.Flush()
}

func (cw *chunkWriter) close() {
	if !cw.wroteHeader {
		cw.writeHeader(nil)
	}
	if !cw.chunking {
		return
	}
	bw := cw.res.sc.bw
	bw.WriteString("0\r\n")
	if t := cw.res.finalTrailers(); t != nil {
		t.Write(bw)
	}
	bw.WriteString("\r\n")
}

// finalTrailers are the trailers the handler declared and set, and those
// it set with http.TrailerPrefix.
func (w *response) finalTrailers() http.Header {
	var t http.Header
	for k, vv := range w.handlerHeader {
		if kk, found := strings.CutPrefix(k, http.TrailerPrefix); found {
			if t == nil {
				t = make(http.Header)
			}
			t[kk] = vv
		}
	}
	for _, k := range w.trailers {
		if t == nil {
			t = make(http.Header)
		}
		for _, v := range w.handlerHeader[k] {
			t.Add(k, v)
		}
	}
	return t
}

var (
	excludedNoBody = map[string]bool{"Content-Length": true, "Transfer-Encoding": true}
	suppressed304  = []string{"Content-Type", "Content-Length", "Transfer-Encoding"}
	suppressedNone = []string{"Content-Length", "Transfer-Encoding"}
)

func bodyAllowedForStatus(status int) bool {
	switch {
	case status >= 100 && status <= 199:
		return false
	case status == 204, status == 304:
		return false
	}
	return true
}

func writeStatusLine(bw *bufio.Writer, is11 bool, code int) {
	if is11 {
		bw.WriteString("HTTP/1.1 ")
	} else {
		bw.WriteString("HTTP/1.0 ")
	}
	var b [8]byte
	if text := http.StatusText(code); text != "" {
		bw.Write(strconv.AppendInt(b[:0], int64(code), 10))
		bw.WriteByte(' ')
		bw.WriteString(text)
		bw.WriteString("\r\n")
		return
	}
	c := strconv.Itoa(code)
	bw.WriteString(strings.Repeat("0", 3-min(3, len(c))) + c + " status code " + c + "\r\n")
}

// trackBody is a request body as the server reads it: it knows when it
// ended and how much of a declared length is left.
type trackBody struct {
	mu         sync.Mutex
	rc         io.ReadCloser
	remain     int64 // of a Content-Length; -1 chunked
	eof        bool
	closed     bool
	earlyClose bool
}

func (b *trackBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.read(p)
}

func (b *trackBody) read(p []byte) (int, error) {
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	n, err := b.rc.Read(p)
	if b.remain > 0 {
		b.remain -= int64(n)
	}
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

// Close reads and drops a short rest of the body so the connection can
// carry the next request, as net/http's server does, and gives up on a
// long one (the connection closes).
func (b *trackBody) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	var err error
	if !b.eof {
		if b.remain > maxPostHandlerRead {
			b.earlyClose = true
		} else {
			var n int64
			n, err = io.CopyN(io.Discard, lockedBody{b}, maxPostHandlerRead)
			if err == io.EOF {
				err = nil
			}
			if n == maxPostHandlerRead {
				b.earlyClose = true
			}
		}
	}
	b.closed = true
	return err
}

func (b *trackBody) closedEarly() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.earlyClose
}

// lockedBody reads a trackBody whose lock is held.
type lockedBody struct{ b *trackBody }

func (l lockedBody) Read(p []byte) (int, error) { return l.b.read(p) }

// continueBody answers "100 Continue" when the handler first reads a body
// the client waits to send.
type continueBody struct {
	tb     *trackBody
	w      *response
	sawEOF atomic.Bool
}

func (c *continueBody) Read(p []byte) (int, error) {
	w := c.w
	w.continueMu.Lock()
	if w.canWriteContinue {
		w.canWriteContinue = false
		w.sc.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
		w.sc.bw.Flush()
	}
	w.continueMu.Unlock()
	n, err := c.tb.Read(p)
	if err == io.EOF {
		c.sawEOF.Store(true)
	}
	return n, err
}

func (c *continueBody) Close() error { return c.tb.Close() }
