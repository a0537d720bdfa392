package proxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"

	httpproxy "github.com/gatehouse-dmz/gatehouse/proxy/http"
)

// httpServer is the net/http server of one socket for one set of
// listener-wide HTTP limits (header size, read-header and idle timeouts).
// net/http reads those from its Server while it serves, so they cannot
// change under a running one without a data race. A reload that changes
// them starts a new httpServer for new connections and retires the old
// one gracefully: its keep-alive connections are closed once idle (HTTP/2
// ones get a GOAWAY) and clients reconnect to the new settings; requests
// in progress finish. A reload that leaves them alone keeps the server,
// and with it every keep-alive connection, which reaches the new
// generation's routes at its next request.
type httpServer struct {
	settings httpSettings
	hs       *http.Server
	queue    *connQueue
}

func (s *Server) newHTTPServer(sk *socket, set httpSettings) *httpServer {
	h := &httpServer{settings: set, queue: newConnQueue(sk.ln.Addr())}
	h.hs = &http.Server{
		Handler:           http.HandlerFunc(sk.serveHTTP),
		ReadHeaderTimeout: set.readHeaderTimeout,
		IdleTimeout:       set.idleTimeout,
		MaxHeaderBytes:    httpproxy.HeaderReadLimit(set.maxHeaderBytes), // the handler answers 431 over the limit
		ConnContext:       s.connContext,
		ErrorLog:          slog.NewLogLogger(s.logger.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return sk.ctx },
	}
	h.hs.Protocols = new(http.Protocols)
	h.hs.Protocols.SetHTTP1(true)
	h.hs.Protocols.SetHTTP2(true)
	go func() {
		// Serve returns when Shutdown closes the queue.
		if err := h.hs.Serve(h.queue); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.logger.Error("http server ended", "addr", sk.addr, "err", err)
		}
	}()
	return h
}

// httpServers are the HTTP servers of a socket: the one new connections
// go to, and retired ones still finishing connections of earlier settings.
type httpServers struct {
	mu      sync.Mutex
	cur     *httpServer
	retired map[*httpServer]struct{}
	wg      sync.WaitGroup // retirements in progress
}

// use makes a server with set the current one, unless it already is; nil
// (the listener no longer speaks HTTP) retires the current one.
func (s *Server) useHTTP(sk *socket, set *httpSettings) {
	hsv := &sk.http
	hsv.mu.Lock()
	defer hsv.mu.Unlock()
	old := hsv.cur
	if old != nil && set != nil && old.settings == *set {
		return
	}
	hsv.cur = nil
	if set != nil {
		hsv.cur = s.newHTTPServer(sk, *set)
	}
	if old == nil {
		return
	}
	if hsv.retired == nil {
		hsv.retired = map[*httpServer]struct{}{}
	}
	hsv.retired[old] = struct{}{}
	hsv.wg.Add(1)
	go func() {
		defer hsv.wg.Done()
		// Returns once its connections are gone, or the socket drains.
		old.hs.Shutdown(sk.ctx)
		hsv.mu.Lock()
		delete(hsv.retired, old)
		hsv.mu.Unlock()
	}()
}

// push hands an identified connection to the current HTTP server.
func (sk *socket) pushHTTP(c net.Conn) bool {
	for {
		sk.http.mu.Lock()
		cur := sk.http.cur
		sk.http.mu.Unlock()
		if cur == nil {
			return false
		}
		if cur.queue.push(c) {
			return true
		}
		// Retired meanwhile: try the server that replaced it.
		sk.http.mu.Lock()
		same := sk.http.cur == cur
		sk.http.mu.Unlock()
		if same {
			return false
		}
	}
}

// all returns every HTTP server of the socket, current first.
func (hsv *httpServers) all() []*httpServer {
	hsv.mu.Lock()
	defer hsv.mu.Unlock()
	var out []*httpServer
	if hsv.cur != nil {
		out = append(out, hsv.cur)
	}
	for h := range hsv.retired {
		out = append(out, h)
	}
	return out
}

// connQueue is the net.Listener http.Server serves: it yields connections
// whose handshake and identification already succeeded.
type connQueue struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
	addr net.Addr
}

func newConnQueue(addr net.Addr) *connQueue {
	return &connQueue{ch: make(chan net.Conn), done: make(chan struct{}), addr: addr}
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) push(c net.Conn) bool {
	select {
	case q.ch <- c:
		return true
	case <-q.done:
		return false
	}
}

func (q *connQueue) Close() error {
	q.once.Do(func() { close(q.done) })
	return nil
}

func (q *connQueue) Addr() net.Addr { return q.addr }
