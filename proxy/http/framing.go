package httpproxy

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
)

// writeHeader writes the status line and header of the answer, p being
// the start of its body (all of it once the handler is done): net/http's
// server's rules for Content-Length, chunking, Content-Type, Date and
// Connection, so that the same handler sends the same bytes either way.
func (cw *chunkWriter) writeHeader(p []byte) {
	if cw.wroteHeader {
		return
	}
	cw.wroteHeader = true
	w := cw.res
	isHEAD := w.req.Method == http.MethodHead
	header := w.handlerHeader
	if w.sent != nil {
		header = w.sent
	}
	var exclude map[string]bool
	del := func(key string) {
		if _, ok := header[key]; !ok {
			return
		}
		if exclude == nil {
			exclude = map[string]bool{}
		}
		exclude[key] = true
	}
	var (
		clen                          []byte
		contentType, connection, tenc string
	)
	trailers := false
	for k := range header {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			if exclude == nil {
				exclude = map[string]bool{}
			}
			exclude[k] = true
			trailers = true
		}
	}
	for _, v := range header["Trailer"] {
		trailers = true
		for f := range strings.SplitSeq(v, ",") {
			if f = strings.TrimSpace(f); f != "" {
				if f = http.CanonicalHeaderKey(f); httpguts.ValidTrailerHeader(f) {
					w.trailers = append(w.trailers, f)
				}
			}
		}
	}
	te := header.Get("Transfer-Encoding")
	hasTE := te != ""
	if w.handlerDone && !trailers && !hasTE && bodyAllowedForStatus(w.status) && !hasKey(header, "Content-Length") && (!isHEAD || len(p) > 0) {
		w.contentLength = int64(len(p))
		clen = strconv.AppendInt(w.clenBuf[:0], int64(len(p)), 10)
	}
	if w.wants10KeepAlive && header.Get("Content-Length") != "" && header.Get("Connection") == "keep-alive" {
		w.closeAfterReply = false
	}
	hasCL := w.contentLength != -1
	if w.wants10KeepAlive && (isHEAD || hasCL || !bodyAllowedForStatus(w.status)) {
		if _, set := header["Connection"]; !set {
			connection = "keep-alive"
		}
	} else if !w.req.ProtoAtLeast(1, 1) || w.wantsClose {
		w.closeAfterReply = true
	}
	if header.Get("Connection") == "close" {
		w.closeAfterReply = true
	}
	if cb, ok := w.req.Body.(*continueBody); ok && !cb.sawEOF.Load() {
		w.closeAfterReply = true
	}
	if w.req.ContentLength != 0 && !w.closeAfterReply && w.reqBody != nil {
		cw.dropBody(w.req.Body, &connection, del)
	}
	code := w.status
	if bodyAllowedForStatus(code) {
		_, haveType := header["Content-Type"]
		if header.Get("Content-Encoding") == "" && !haveType && !hasTE && len(p) > 0 {
			contentType = http.DetectContentType(p)
		}
	} else {
		s := suppressedNone
		if code == http.StatusNotModified {
			s = suppressed304
		}
		for _, k := range s {
			del(k)
		}
	}
	var date []byte
	if _, ok := header["Date"]; !ok {
		date = time.Now().UTC().AppendFormat(w.dateBuf[:0], http.TimeFormat)
	}
	if hasCL && hasTE && te != "identity" {
		del("Content-Length")
		hasCL = false
	}
	switch {
	case isHEAD || !bodyAllowedForStatus(code) || code == http.StatusNoContent:
		del("Transfer-Encoding")
	case hasCL:
		del("Transfer-Encoding")
	case w.req.ProtoAtLeast(1, 1):
		if hasTE && te == "identity" {
			cw.chunking = false
			w.closeAfterReply = true
			del("Transfer-Encoding")
		} else {
			cw.chunking = true
			tenc = "chunked"
			if hasTE && te == "chunked" {
				del("Transfer-Encoding")
			}
		}
	default:
		w.closeAfterReply = true
		del("Transfer-Encoding")
	}
	if cw.chunking {
		del("Content-Length")
	}
	if w.closeAfterReply && !hasToken(header["Connection"][:min(1, len(header["Connection"]))], "close") && !isSwitch(code, header) {
		del("Connection")
		if w.req.ProtoAtLeast(1, 1) {
			connection = "close"
		}
	}
	bw := w.sc.bw
	writeStatusLine(bw, w.req.ProtoAtLeast(1, 1), code)
	header.WriteSubset(bw, exclude)
	if date != nil {
		bw.WriteString("Date: ")
		bw.Write(date)
		bw.Write(crlf)
	}
	if clen != nil {
		bw.WriteString("Content-Length: ")
		bw.Write(clen)
		bw.Write(crlf)
	}
	for _, kv := range [...][2]string{{"Content-Type", contentType}, {"Connection", connection}, {"Transfer-Encoding", tenc}} {
		if kv[1] != "" {
			bw.WriteString(kv[0])
			bw.WriteString(": ")
			bw.WriteString(kv[1])
			bw.Write(crlf)
		}
	}
	bw.Write(crlf)
}

// dropBody decides what becomes of a request body the handler left
// unread once the answer starts: a short rest is read and dropped (the
// connection stays), a long one closes the connection.
func (cw *chunkWriter) dropBody(body io.ReadCloser, connection *string, del func(string)) {
	w := cw.res
	var discard, tooBig bool
	switch b := body.(type) {
	case *continueBody:
	case *trackBody:
		b.mu.Lock()
		switch {
		case b.closed:
			if !b.eof {
				w.closeAfterReply = true
			}
		case b.remain >= maxPostHandlerRead:
			tooBig = true
		default:
			discard = true
		}
		b.mu.Unlock()
	default:
		discard = true
	}
	if discard {
		_, err := io.CopyN(io.Discard, w.reqBody, maxPostHandlerRead+1)
		switch err {
		case nil:
			tooBig = true
		case http.ErrBodyReadAfterClose:
		case io.EOF:
			if err := w.reqBody.Close(); err != nil {
				w.closeAfterReply = true
			}
		default:
			w.closeAfterReply = true
		}
	}
	if tooBig {
		w.requestTooLarge()
		del("Connection")
		*connection = "close"
	}
}

// isSwitch is a 101 answer to an upgrade.
func isSwitch(code int, h http.Header) bool {
	return code == http.StatusSwitchingProtocols && h.Get("Upgrade") != ""
}

func hasKey(h http.Header, k string) bool {
	_, ok := h[k]
	return ok
}
