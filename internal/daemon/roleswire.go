package daemon

import (
	"crypto/tls"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/internal/config"
	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/proxy"
	"github.com/gatehouse-dmz/gatehouse/proxy/relay"
	"github.com/gatehouse-dmz/gatehouse/tunnel"
)

// buildGateway makes the gateway role's tunnel port: its own certificate
// manager for gateway.connectors, watched (a CRL or CA change judges every
// tunnel again), and the tunnel gateway. The proxy hands the returned
// path every connection its listeners identify.
func buildGateway(env *Env) (*layer, *gatewayPath, error) {
	cfg := env.Config
	g := cfg.Gateway
	trust, err := GatewayTrust(cfg, env.Logger)
	if err != nil {
		return nil, nil, err
	}
	tc, err := trust.TLSConfig(config.TunnelListener)
	if err != nil {
		trust.Close()
		return nil, nil, err
	}
	gw, err := tunnel.NewGateway(tunnel.GatewayConfig{
		Logger: env.Logger, Listen: g.Listen, TLS: tc, Tenants: g.ConnectorKeys(),
		Identify: func(cs tls.ConnectionState) (string, error) {
			id, err := trust.Identify(cs)
			return id.Tenant, err
		},
		StreamsPerTunnel: g.StreamsPerTunnel, StreamsPerTenant: g.StreamsPerTenant,
		Keepalive: g.Keepalive.Interval, KeepaliveTimeout: g.Keepalive.Timeout,
	})
	if err != nil {
		trust.Close()
		return nil, nil, err
	}
	trust.OnChange(func() {
		if n := gw.Revalidate(); n > 0 {
			env.Logger.Info("closed tunnels whose connector certificate no longer checks out", "component", "tunnel", "count", n)
		}
	})
	l := &layer{name: "tunnel", rangeBlind: true,
		apply:    func(*policy.Policy) error { return nil }, // start-only: gateway: changes take a restart
		close:    func() error { return errors.Join(gw.Close(), trust.Close()) },
		run:      runBoth(gw.Run, trust.Watch),
		shutdown: gw.Shutdown,
	}
	if err := register(env, "tunnel", gw); err != nil {
		return l, nil, err
	}
	return l, &gatewayPath{gw: gw, log: env.Logger.With("component", "tunnel")}, nil
}

// buildConnector makes the connector role's tunnels; each stream is
// served by the proxy as a connection of the listener its header names,
// with the original client's certificate identified again.
func buildConnector(env *Env, px *proxy.Server) (*layer, error) {
	k := env.Config.Connector
	tc, hp, err := ConnectorTLS(env.Config)
	if err != nil {
		return nil, err
	}
	// The protocol of each listener of the generation in force: a stream
	// the gateway took on a listener of another protocol is refused, not
	// fed to the wrong parser.
	var protos atomic.Pointer[map[string]policy.Protocol]
	setProtos := func(p *policy.Policy) error {
		m := map[string]policy.Protocol{}
		for _, l := range p.Listeners {
			m[l.Name] = l.Protocol
		}
		protos.Store(&m)
		return nil
	}
	_ = setProtos(env.Policy)
	for _, w := range env.Config.AllowListWarnings() {
		env.Logger.Warn(w, "component", "tunnel")
	}
	c, err := tunnel.NewConnector(tunnel.ConnectorConfig{
		Logger: env.Logger, Tenant: k.Tenant, Gateways: k.Gateways, TLS: tc, Tunnels: k.Tunnels, Proxy: hp,
		Keepalive: k.Keepalive.Interval, KeepaliveTimeout: k.Keepalive.Timeout,
		Check: func(h *tunnel.Header) error {
			proto, ok := (*protos.Load())[h.Listener]
			switch {
			case !ok:
				return fmt.Errorf("this connector has no listener %q", h.Listener)
			case string(proto) != h.Protocol:
				return fmt.Errorf("listener %q is %s here, %s at the gateway", h.Listener, proto, h.Protocol)
			}
			return nil
		},
		Serve: func(conn *tunnel.Conn) error { return refusal(px.ServeConn(conn, streamPeer(conn))) },
	})
	if err != nil {
		return nil, err
	}
	creds := newConnectorCreds(env.Config, c, env.Logger)
	l := &layer{name: "tunnel", rangeBlind: true,
		apply: func(p *policy.Policy) error {
			creds.reload()      // a bad file keeps the old credentials, and says so
			return setProtos(p) // after the proxy's: its listeners are in force
		},
		close:    c.Close,
		run:      runBoth(c.Run, creds.watch),
		shutdown: c.Shutdown,
		notReady: func() string {
			if len(c.Up()) == 0 {
				return "no tunnel up to any gateway"
			}
			return ""
		},
	}
	if err := register(env, "tunnel", c); err != nil {
		return l, err
	}
	return l, nil
}

// refusal gives a proxy's refusal of a handed-in stream the reason the
// gateway tells the client: the certificate check's result or the limit,
// never the connector's detail (CRL files, serials), which its log has.
func refusal(err error) error {
	var reason string
	busy := false // lack of room: the gateway tries another connector
	switch {
	case err == nil:
		return nil
	case errors.Is(err, proxy.ErrUnverified):
		reason = "the connector cannot verify the client certificate"
		if r := certs.ResultOf(err); r != certs.ResultOther {
			reason = "client certificate refused by the connector (" + string(r) + ")"
		}
	case errors.Is(err, proxy.ErrListenerFull):
		reason, busy = "the connector's listener is full", true
	case errors.Is(err, proxy.ErrNoListener):
		reason = "the connector has no such listener"
	case errors.Is(err, proxy.ErrClosed):
		reason, busy = "the connector is shutting down", true
	case errors.Is(err, relay.ErrDescriptors):
		reason, busy = "the connector is out of file descriptors", true
	default:
		return err
	}
	return &tunnel.RefusedError{Reason: reason, Err: err, Busy: busy}
}

// streamPeer is the original client as the stream's header names it; the
// proxy identifies its certificate again before it serves anything.
func streamPeer(conn *tunnel.Conn) certs.Peer {
	h := conn.Header()
	p := certs.Peer{Tenant: h.Tenant, Environment: h.Environment, FingerprintSHA256: h.FingerprintSHA256, Listener: h.Listener, Source: h.Source, ServerName: h.ServerName}
	if cs := conn.ConnectionState(); len(cs.PeerCertificates) > 0 {
		p.Subject = cs.PeerCertificates[0].Subject.String()
		p.NotAfter = cs.PeerCertificates[0].NotAfter
	}
	return p
}
