package relay

import (
	"context"
	"crypto/tls"
	"net"
	"time"
)

// DialBackend connects to a stream backend (a tcp listener's, a terminal
// host) within timeout, the TLS handshake included when tc is set. fds,
// when not nil, counts the connection until it is closed and refuses it
// with ErrDescriptors while the process is within its descriptor reserve.
func DialBackend(ctx context.Context, fds *Descriptors, addr string, tc *tls.Config, timeout time.Duration) (net.Conn, error) {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	d := &net.Dialer{}
	if fds != nil {
		d.Control = fds.Control()
	}
	dial := d.DialContext
	if fds != nil {
		dial = fds.Dialer(dial)
	}
	c, err := dial(ctx, "tcp", addr)
	if err != nil || tc == nil {
		return c, err
	}
	if tc.ServerName == "" {
		// As tls.Dial does: the certificate names the host dialled.
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			c.Close()
			return nil, err
		}
		tc = tc.Clone()
		tc.ServerName = host
	}
	tconn := tls.Client(c, tc)
	if err := tconn.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return tconn, nil
}
