package httpproxy

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/proxy/relay"
)

// ErrNoUpgrade is a protocol switch the proxy does not allow here: not an
// HTTP/1.1 request that asked for one.
var ErrNoUpgrade = errors.New("no protocol switch was asked for")

// UpgradeHook is how the layer that owns a client connection follows it
// once an upgrade (a backend's 101, WebSocket) turns it into a tunnel on
// one route: it is called with the route's key and the tunnel's timer
// before the tunnel starts. From then on that layer ends the connection
// when a reload removes or changes the route (Handler.HasRoute answers for
// the new generation), and gives the timer the limits.tcp of the
// generation in force, now and at every reload (relay.Timer.Set), as it
// does for tcp sessions. An error refuses the tunnel: the route is gone
// already.
type UpgradeHook func(routeKey string, timer *relay.Timer) error

type upgradeHookKey struct{}

// WithUpgradeHook returns ctx carrying the connection's upgrade hook.
// Without one a tunnel is bounded by its limits only.
func WithUpgradeHook(ctx context.Context, hook UpgradeHook) context.Context {
	return context.WithValue(ctx, upgradeHookKey{}, hook)
}

// HasRoute reports whether the (tenant, environment) has the route of
// key on this generation.
func (h *Handler) HasRoute(te policy.TenantEnv, key string) bool {
	for _, rt := range h.byTenant[te] {
		if rt.key == key {
			return true
		}
	}
	return false
}

// upgrade is what a request that may switch protocols needs to become a
// tunnel: set by serve once the route is known.
type upgrade struct {
	h       *Handler
	rt      *route
	st      *requestState
	hook    UpgradeHook
	release func() // the request's in-flight slot: a tunnel is not a request in flight
	t       *tunnel
	refused error // why the hook refused the tunnel
}

// Hijack is how ReverseProxy takes the client connection for a 101: the
// connection's owner is told of the tunnel first (and may refuse it), then
// the connection is handed over wrapped in the tunnel's limits.
func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	u := w.up
	if u == nil {
		return nil, nil, ErrNoUpgrade
	}
	t := newTunnel(u.st.lim.Stream)
	if u.hook != nil {
		if err := u.hook(u.rt.key, t.timer); err != nil {
			t.timer.Stop()
			u.refused = err
			return nil, nil, err
		}
	}
	c, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		t.timer.Stop()
		return nil, nil, err
	}
	w.status = http.StatusSwitchingProtocols
	u.release()
	t.attach(c)
	u.t = t
	return t, brw, nil
}

// Reasons a tunnel was ended by the proxy.
const (
	endIdle = "idle timeout"
	endMax  = "maximum session length"
)

// tunnel is the client side of an upgraded connection: it counts the bytes
// and ends the connection when its relay.Timer says so: limits.tcp's
// idle_timeout without a byte either way, or max_session after the switch.
type tunnel struct {
	net.Conn // set by attach, before anything reads or writes
	timer    *relay.Timer
	in, out  atomic.Int64
	ended    atomic.Pointer[string] // why the proxy ended it

	mu       sync.Mutex // attach against end
	attached bool
}

// newTunnel starts the timer of a tunnel whose connection attach hands
// over later: the owner registers the timer first (see UpgradeHook).
func newTunnel(lim policy.StreamLimits) *tunnel {
	t := &tunnel{}
	t.timer = relay.NewTimer(time.Now(), lim.IdleTimeout, lim.MaxSession, t.end)
	return t
}

// attach gives the tunnel its connection; one the timer ended meanwhile is
// closed at once.
func (t *tunnel) attach(c net.Conn) {
	t.mu.Lock()
	t.Conn, t.attached = c, true
	t.mu.Unlock()
	if t.ended.Load() != nil {
		c.Close()
	}
}

func (t *tunnel) Read(p []byte) (int, error) {
	n, err := t.Conn.Read(p)
	if n > 0 {
		t.in.Add(int64(n))
		t.timer.Touch()
	}
	return n, err
}

func (t *tunnel) Write(p []byte) (int, error) {
	n, err := t.Conn.Write(p)
	if n > 0 {
		t.out.Add(int64(n))
		t.timer.Touch()
	}
	return n, err
}

// end closes the connection for the timer's reason; ReverseProxy's copies
// then stop and it closes the backend's side.
func (t *tunnel) end(why error) {
	reason := endMax
	if errors.Is(why, relay.ErrIdle) {
		reason = endIdle
	}
	if !t.ended.CompareAndSwap(nil, &reason) {
		return
	}
	t.mu.Lock()
	c := t.Conn
	if !t.attached {
		c = nil
	}
	t.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

func (t *tunnel) Close() error {
	t.timer.Stop()
	return t.Conn.Close()
}

// endReason is why the proxy ended the tunnel, "" when a peer (or the
// connection's owner, on reload or shutdown) did.
func (t *tunnel) endReason() string {
	if r := t.ended.Load(); r != nil {
		return *r
	}
	return ""
}

// tunnelEnded adds the tunnel's bytes and end to the access log line and
// logs an end the proxy decided.
func (h *Handler) tunnelEnded(u *upgrade, attrs []slog.Attr) []slog.Attr {
	why := u.t.endReason()
	if why != "" {
		h.logger.Info("upgraded connection closed: "+why, "listener", h.listener, "tenant", u.st.peer.Tenant,
			"route", u.rt.label, "source", u.st.peer.Source.String(), "id", u.st.id)
	}
	return append(attrs, slog.Int64("tunnel_in", u.t.in.Load()), slog.Int64("tunnel_out", u.t.out.Load()),
		slog.String("tunnel_end", cmp.Or(why, "closed")))
}
