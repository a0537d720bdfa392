package daemon

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"html"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/internal/config"
	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/proxy/relay"
	"github.com/gatehouse-dmz/gatehouse/tunnel"
)

// refusalReadLimit and refusalReadTimeout bound what the gateway reads of
// a request it refuses, so the answer comes after the request (a client
// still sending would otherwise get a reset instead of the answer).
const (
	refusalReadLimit   = 64 << 10
	refusalReadTimeout = 5 * time.Second
)

// gatewayPath sends a tenant's connection, accepted and identified by a
// listener, down a tunnel of the tenant's connectors.
type gatewayPath struct {
	gw  *tunnel.Gateway
	log *slog.Logger

	// Refusal lines, as the proxy's: 10 a second after a burst of 50,
	// the held-back ones counted on the next.
	mu         sync.Mutex
	lines      relay.Bucket
	suppressed int
}

// serve carries nc (peer's, on a listener of protocol proto) to the
// tenant's connector and back; it returns when either end closed.
func (p *gatewayPath) serve(ctx context.Context, nc net.Conn, peer certs.Peer, proto policy.Protocol) {
	var chain [][]byte
	alpn := ""
	if cs, ok := nc.(interface{ ConnectionState() tls.ConnectionState }); ok {
		st := cs.ConnectionState()
		for _, c := range st.PeerCertificates {
			chain = append(chain, c.Raw)
		}
		alpn = st.NegotiatedProtocol
	}
	st, err := p.gw.Open(&tunnel.Header{Tenant: peer.Tenant, Environment: peer.Environment, FingerprintSHA256: peer.FingerprintSHA256, Source: peer.Source,
		Listener: peer.Listener, Protocol: string(proto), ServerName: peer.ServerName, ALPN: alpn, Chain: chain})
	if err != nil {
		p.refuse(nc, peer, proto, err, true)
		return
	}
	defer st.Close()
	stop := context.AfterFunc(ctx, func() { nc.Close(); st.Close() })
	defer stop()
	up := make(chan struct{})
	go func() {
		defer close(up)
		// The client's bytes go at once: the connector's answer arrives
		// before its first byte, and waiting for it would cost a round trip.
		_, _ = io.Copy(st, nc)
		_ = st.CloseWrite()
	}()
	if err := st.Accepted(); err != nil {
		p.refuse(nc, peer, proto, err, false)
		st.Close()
		<-up
		return
	}
	_, _ = io.Copy(nc, st)
	// The connector's side ended: the session is over.
	nc.Close()
	st.Close()
	<-up
}

// refuse answers a session no connector takes in the client's own
// protocol, says why in one log line, and closes. unread: the client's
// request has not been read yet.
func (p *gatewayPath) refuse(nc net.Conn, peer certs.Peer, proto policy.Protocol, err error, unread bool) {
	reason := "no connector of the tenant is connected"
	var refused *tunnel.RefusedError
	switch {
	case errors.As(err, &refused):
		reason = "the tenant's connector refused the session: " + refused.Reason
	case errors.Is(err, tunnel.ErrTenantLimit), errors.Is(err, tunnel.ErrTunnelsFull):
		reason = "the tenant's tunnels are full"
	case errors.Is(err, tunnel.ErrNoTunnel):
	default:
		reason = "the tenant's tunnel failed"
	}
	p.mu.Lock()
	ok := p.lines.Take(time.Now(), 10, 50)
	held := p.suppressed
	if ok {
		p.suppressed = 0
	} else {
		p.suppressed++
	}
	p.mu.Unlock()
	if ok {
		args := []any{"listener", peer.Listener, "tenant", peer.Tenant, "source", peer.Source.String(), "err", err}
		if held > 0 {
			args = append(args, "similar_lines_suppressed", held)
		}
		p.log.Warn("session refused: "+reason, args...)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(refusalReadTimeout))
	switch proto {
	case policy.ProtoHTTPS, policy.ProtoSOAP:
		if unread {
			// Read the request head, so the answer is not lost to a reset.
			if req, err := http.ReadRequest(bufio.NewReader(io.LimitReader(nc, refusalReadLimit))); err == nil {
				_, _ = io.Copy(io.Discard, io.LimitReader(req.Body, refusalReadLimit))
			}
		}
		body, ctype := reason+"\n", "text/plain; charset=utf-8"
		if proto == policy.ProtoSOAP {
			ctype = "text/xml; charset=utf-8"
			body = `<?xml version="1.0" encoding="utf-8"?>` +
				`<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><soap:Fault>` +
				`<faultcode>soap:Server</faultcode><faultstring>` + html.EscapeString(reason) + `</faultstring>` +
				`</soap:Fault></soap:Body></soap:Envelope>`
		}
		fmt.Fprintf(nc, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: %s\r\nContent-Length: %d\r\nRetry-After: 5\r\nConnection: close\r\n\r\n%s",
			ctype, len(body), body)
	case policy.ProtoTN3270, policy.ProtoTN5250, policy.ProtoTNVIP:
		// Before any negotiation a terminal emulator shows plain text.
		fmt.Fprintf(nc, "gatehouse: %s\r\n", reason)
	}
	if cw, ok := nc.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

// tunnelRoutes are a gateway's listeners as status shows them: a
// listener routes nothing itself, so each tenant with connectors is a
// route down its tunnels, with how many are up (up, by tenant).
func tunnelRoutes(p *policy.Policy, cfg *config.Config, up []TunnelStatus) []ListenerRoute {
	if cfg.Role() != config.RoleGateway {
		return nil
	}
	n := map[string]int{}
	for _, t := range up {
		n[t.Peer] = t.Up
	}
	var out []ListenerRoute
	for _, l := range p.Listeners {
		if !l.Tunnel {
			continue
		}
		for _, c := range cfg.Gateway.Connectors {
			out = append(out, ListenerRoute{Listener: l.Name, Listen: l.ListenAddress(), Protocol: string(l.Protocol), Tenant: c.Tenant,
				Backends: []string{fmt.Sprintf("tunnel: %s's connectors (%d up)", c.Tenant, n[c.Tenant])}})
		}
	}
	return out
}
