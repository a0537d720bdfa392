package proxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"

	httpproxy "github.com/gatehouse-dmz/gatehouse/proxy/http"
	"github.com/gatehouse-dmz/gatehouse/proxy/relay"
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
	// Connections the direct engine serves (limits.http.engine direct)
	// instead of hs: stop ends them once idle, as Shutdown does hs's.
	stop   context.Context
	retire context.CancelFunc
	direct sync.WaitGroup
}

func (s *Server) newHTTPServer(sk *socket, set httpSettings) *httpServer {
	h := &httpServer{settings: set}
	h.stop, h.retire = context.WithCancel(context.Background())
	h.hs = &http.Server{
		Handler:           http.HandlerFunc(sk.serveHTTP),
		ReadHeaderTimeout: set.readHeaderTimeout,
		IdleTimeout:       set.idleTimeout,
		MaxHeaderBytes:    httpproxy.HeaderReadLimit(set.maxHeaderBytes), // the handler answers 431 over the limit
		ErrorLog:          slog.NewLogLogger(s.logger.Handler(), slog.LevelDebug),
		BaseContext: func(l net.Listener) context.Context {
			// Every connection comes through its own oneConn, which
			// carries it: its requests learn its Peer from there.
			if o, ok := l.(*oneConn); ok {
				return s.peerContext(sk.ctx, o.c)
			}
			return sk.ctx
		},
	}
	h.hs.Protocols = new(http.Protocols)
	h.hs.Protocols.SetHTTP1(true)
	h.hs.Protocols.SetHTTP2(true)
	return h
}

// peerContext is the context of c's requests: the socket's, carrying c's
// Peer and the hook that records an upgrade.
func (s *Server) peerContext(ctx context.Context, c *conn) context.Context {
	ctx = httpproxy.WithUpgradeHook(ctx, func(key string, t *relay.Timer) error { return s.upgraded(c, key, t) })
	return httpproxy.WithPeer(withConn(ctx, c), c.identity())
}

// serveHTTP hands c, identified and admitted, to the socket's current HTTP
// server, and closes it when there is none. It returns the refusal of a
// connection it cannot serve.
func (s *Server) serveHTTP(c *conn, st *listenerState) error {
	h2 := c.state().NegotiatedProtocol == "h2"
	if h2 && c.handed {
		// net/http speaks HTTP/2 only on the *tls.Conn itself, and closes
		// it there: the proxy would never see the connection end.
		s.logRefusal(c, slog.LevelWarn, "connection refused", errHandedH2)
		c.raw.Close()
		return errHandedH2
	}
	// HTTP/2 frames itself; HTTP/1 goes through the framing guard, which
	// refuses what a backend could read differently.
	hc := c.stream
	if c.handed {
		// Its socket is not under its stream: close it with the stream.
		hc = closeWith{hc, c.raw}
	}
	if !h2 {
		hc = httpproxy.NewFramingGuard(hc, st.l.Limits.HTTP.MaxHeaderBytes, func(err error) { s.logRefusal(c, slog.LevelInfo, "HTTP request refused", err) })
	}
	if !c.sock.serveHTTPConn(s, c, hc, h2) {
		c.raw.Close()
	}
	return nil
}

// serveDirect serves the HTTP/1.1 connection hc on this goroutine with
// the direct engine's server half, under the settings of cur, and reports
// whether cur took it (it did not once retired).
func (sk *socket) serveDirect(s *Server, c *conn, hc net.Conn, cur *httpServer) bool {
	sk.http.mu.Lock()
	if sk.http.cur != cur {
		sk.http.mu.Unlock()
		return false
	}
	cur.direct.Add(1)
	sk.http.mu.Unlock()
	defer cur.direct.Done()
	cs := &httpproxy.ConnServer{
		Handler:           cur.hs.Handler,
		MaxHeaderBytes:    cur.hs.MaxHeaderBytes,
		ReadHeaderTimeout: cur.settings.readHeaderTimeout,
		IdleTimeout:       cur.settings.idleTimeout,
		Logger:            s.logger,
	}
	cs.ServeConn(s.peerContext(sk.ctx, c), hc, cur.stop)
	return true
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
		old.shutdown(sk.ctx)
		hsv.mu.Lock()
		delete(hsv.retired, old)
		hsv.mu.Unlock()
	}()
}

// serveHTTPConn hands hc, the stream of the identified connection c, to
// the current HTTP server, and reports whether one took it. Under the
// direct engine an HTTP/1.1 connection is served on this goroutine.
func (sk *socket) serveHTTPConn(s *Server, c *conn, hc net.Conn, h2 bool) bool {
	for {
		sk.http.mu.Lock()
		cur := sk.http.cur
		sk.http.mu.Unlock()
		if cur == nil {
			return false
		}
		if cur.settings.direct && !h2 {
			if sk.serveDirect(s, c, hc, cur) {
				return true
			}
		} else {
			o := &oneConn{c: c, nc: hc, addr: sk.ln.Addr()}
			// Serve returns once it took hc (its goroutine serves it on),
			// or at once when the server was shut down.
			cur.hs.Serve(o)
			if o.taken.Load() {
				return true
			}
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

// shutdown ends the server's connections as they go idle, net/http's and
// the direct engine's, and returns once they are gone or ctx is done.
func (h *httpServer) shutdown(ctx context.Context) {
	h.retire()
	h.hs.Shutdown(ctx)
	direct := make(chan struct{})
	go func() { h.direct.Wait(); close(direct) }()
	select {
	case <-direct:
	case <-ctx.Done():
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

// oneConn is the net.Listener an HTTP server accepts one identified
// connection from, and the way the connection's Peer reaches its requests
// (the server's BaseContext reads it here). It is the listener, not a
// wrapper around the connection, that carries the Peer: net/http speaks
// HTTP/2 only to a connection that is a *tls.Conn itself.
type oneConn struct {
	c     *conn
	nc    net.Conn
	taken atomic.Bool
	addr  net.Addr
}

// errHandedH2 refuses HTTP/2 on a connection ServeConn was handed.
var errHandedH2 = errors.New("HTTP/2 on a handed-in connection: the source must offer http/1.1")

// closeWith is a connection whose Close closes the socket under it (and
// so runs the proxy's bookkeeping) too.
type closeWith struct {
	net.Conn
	raw *relay.CountingConn
}

func (c closeWith) Close() error {
	err := c.Conn.Close()
	c.raw.Close()
	return err
}

// errOneConn ends http.Server.Serve once it has taken the connection.
var errOneConn = errors.New("connection handed over")

func (o *oneConn) Accept() (net.Conn, error) {
	if o.taken.CompareAndSwap(false, true) {
		return o.nc, nil
	}
	return nil, errOneConn
}

func (o *oneConn) Close() error   { return nil }
func (o *oneConn) Addr() net.Addr { return o.addr }
