// Package tunnel carries tenant sessions from a gateway to the connectors
// of their tenant: TLS connections the connector dials out, multiplexed
// with yamux, one stream per session, each opened by the gateway and
// started by a Header that names the original client.
//
// The gateway side (Gateway) accepts tunnels on its own port, binds each
// to the one tenant its connector certificate proves (the caller's
// Identify decides, with the certificate checks of package certs), keeps
// a pool per tenant, opens streams on the least loaded healthy tunnel
// within the per-tunnel and per-tenant limits, and closes tunnels whose
// certificate no longer checks out (Revalidate). The connector side
// (Connector) keeps its tunnels up, through an HTTP CONNECT proxy if it
// must, with exponential backoff and jitter, checks every stream's header
// against its own tenant, and hands the stream to the caller's Serve.
// AllowList is the connector's destination check, for the dialer of every
// backend connection.
//
// It knows nothing of listeners, routes or protocols beyond the names a
// Header carries: the daemon wires it to the proxy.
package tunnel
