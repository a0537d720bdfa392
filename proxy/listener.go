package proxy

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
	httpproxy "github.com/gatehouse-dmz/gatehouse/proxy/http"
	"github.com/gatehouse-dmz/gatehouse/proxy/relay"
	"github.com/gatehouse-dmz/gatehouse/proxy/telnet"
)

// socket is one bound address. Its state (which listener it is, TLS
// config, routes) is swapped as a whole by Apply; connections read it when
// they need it, so a reload reaches keep-alive connections at their next
// request.
type socket struct {
	addr  string
	ln    net.Listener
	state atomic.Pointer[listenerState]
	http  httpServers
	gate  gate
	done  chan struct{} // accept loop and every connection of it ended
	// handed counts the connections ServeConn serves here; Add only
	// under Server.mu while the socket is in Server.sockets.
	handed sync.WaitGroup
	ctx    context.Context
	cancel context.CancelFunc
}

// listenerState is one generation of one listener.
type listenerState struct {
	l      policy.Listener
	source policy.SourcePrefix // how per-source limits count a source
	tls    *tls.Config
	http   *httpproxy.Handler
	tcp    map[policy.TenantEnv]*tcpRoute
	telnet *telnet.Handler
	routes map[policy.TenantEnv]string // tcp and telnet: (tenant, environment) → policy.Route.Key, built once
}

func (st *listenerState) start() {
	if st.http != nil {
		st.http.Start()
	}
}

func (st *listenerState) close() {
	if st.http != nil {
		st.http.Close()
	}
}

// hasRoute reports whether tenant still has the route of key here: the
// route of a tcp or telnet session, or of an upgraded HTTP connection.
func (st *listenerState) hasRoute(te policy.TenantEnv, key string) bool {
	if st != nil && st.http != nil {
		return st.http.HasRoute(te, key)
	}
	return st.routeKey(te) == key
}

// routeKey identifies the route a tcp or telnet session of tenant runs on:
// everything of it the session depends on. It is "" for HTTP listeners
// (routed per request) and "-" when the tenant has no route here.
func (st *listenerState) routeKey(te policy.TenantEnv) string {
	if st == nil || st.http != nil {
		return ""
	}
	if k, ok := st.routes[te]; ok {
		return k
	}
	return "-"
}

func (s *Server) newSocket(addr string, ln net.Listener) *socket {
	ctx, cancel := context.WithCancel(context.Background())
	return &socket{addr: addr, ln: ln, done: make(chan struct{}), ctx: ctx, cancel: cancel}
}

func (s *Server) start(sk *socket) {
	go func() {
		defer close(sk.done)
		err := relay.Accept(sk.ln, relay.AcceptConfig{
			Admit:        func(nc net.Conn) func() { return s.accept(sk, nc) },
			AcceptFailed: func(err error, backoff time.Duration) { s.acceptFailed(sk, err, backoff) },
		})
		if err != nil {
			s.logger.Error("accept loop ended", "addr", sk.addr, "err", err)
		}
	}()
}

// serveHTTP hands a request to the socket's current HTTP handler.
func (sk *socket) serveHTTP(w http.ResponseWriter, r *http.Request) {
	st := sk.state.Load()
	if st == nil || st.http == nil {
		// The listener became another protocol under this connection.
		http.Error(w, "misdirected request", http.StatusMisdirectedRequest)
		return
	}
	defer requestStarted(w, r)()
	st.http.ServeHTTP(w, r)
}

// socketOf returns the socket whose listener is named listener, nil when
// none is. s.mu is held.
func (s *Server) socketOf(listener string) *socket {
	for _, sk := range s.sockets {
		if st := sk.state.Load(); st != nil && st.l.Name == listener {
			return sk
		}
	}
	return nil
}
