package tunnel

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// HTTPProxy is the site's HTTP proxy, for networks that leave only
// through one: a tunnel is a CONNECT through it.
type HTTPProxy struct {
	Address  string
	Username string // with Password: basic authentication
	Password string
}

// dialVia connects to addr directly, or through px with CONNECT.
func dialVia(ctx context.Context, px *HTTPProxy, addr string) (net.Conn, error) {
	var d net.Dialer
	if px == nil {
		return d.DialContext(ctx, "tcp", addr)
	}
	nc, err := d.DialContext(ctx, "tcp", px.Address)
	if err != nil {
		return nil, fmt.Errorf("proxy %s: %w", px.Address, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	req := "CONNECT " + addr + " HTTP/1.1\r\nHost: " + addr + "\r\n"
	if px.Username != "" {
		req += "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(px.Username+":"+px.Password)) + "\r\n"
	}
	if _, err := nc.Write([]byte(req + "\r\n")); err != nil {
		nc.Close()
		return nil, fmt.Errorf("proxy %s: %w", px.Address, err)
	}
	// The answer is bounded: a proxy sending endless headers gets nowhere.
	br := bufio.NewReaderSize(io.LimitReader(nc, maxConnectAnswer), 4096)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("proxy %s: CONNECT %s: %w", px.Address, addr, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		nc.Close()
		return nil, fmt.Errorf("proxy %s: CONNECT %s: %s", px.Address, addr, resp.Status)
	}
	if br.Buffered() > 0 {
		// The gateway speaks only after our ClientHello: a proxy that
		// sent more is not a tunnel.
		nc.Close()
		return nil, fmt.Errorf("proxy %s: bytes after the CONNECT answer", px.Address)
	}
	_ = nc.SetDeadline(time.Time{})
	return nc, nil
}

// maxConnectAnswer bounds a proxy's answer to CONNECT.
const maxConnectAnswer = 16 << 10

// ErrNotAllowed is a backend connection the connector's allow-list refuses.
var ErrNotAllowed = errors.New("destination not in connector.allow")

// AllowList is where a connector may connect.
type AllowList []policy.Destination

// Allows reports whether ap is inside the list; an empty list allows
// nothing.
func (a AllowList) Allows(ap netip.AddrPort) bool {
	for _, d := range a {
		if d.Allows(ap) {
			return true
		}
	}
	return false
}

// Control is a net.Dialer Control function: it refuses, before the
// connect, an address outside the list. It sees the address actually
// dialled, after name resolution, so a name cannot lead around it.
func (a AllowList) Control(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: %q", ErrNotAllowed, address)
	}
	if !a.Allows(ap) {
		return fmt.Errorf("%w: %s", ErrNotAllowed, ap)
	}
	return nil
}
