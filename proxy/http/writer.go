package httpproxy

import (
	"io"
	"net/http"
)

// refuse answers the request itself with code and msg; msg is also the
// access log's reason.
func refuse(w http.ResponseWriter, code int, msg string) {
	noteReason(w, msg)
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	io.WriteString(w, msg+"\n")
}

// statusWriter remembers the status and counts the body bytes written.
// Unwrap lets http.ResponseController reach Flush and Hijack underneath.
type statusWriter struct {
	http.ResponseWriter
	status            int
	n                 int64
	closeUnlessSwitch bool   // an HTTP/1 upgrade request: close unless it gets 101
	reason            string // why gatehouse answered itself, for the access log
	up                *upgrade
}

// noteReason records the first reason the request was answered without a
// backend's response.
func noteReason(w http.ResponseWriter, reason string) {
	if sw, ok := w.(*statusWriter); ok && sw.reason == "" {
		sw.reason = reason
	}
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 || (w.status < 200 && code >= 100) {
		w.status = code
	}
	if w.closeUnlessSwitch && code >= 200 {
		w.Header().Set("Connection", "close")
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
