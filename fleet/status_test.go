package fleet

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestStatus: Status shows each peer in its configured order, down before
// its first pull and when it cannot be reached, up with the time of its
// last pull, its result, the blocks received from it and those still
// held; a refused list shows its reason. Blocks served count when a peer
// pulls this node's list.
func TestStatus(t *testing.T) {
	k := newFleetPKI(t)
	good := k.peer(t, `{"blocks":[{"source":"203.0.113.1/32","ttl_seconds":60},{"source":"203.0.113.2/32","ttl_seconds":60}]}`)
	bad := k.peer(t, `{"blocks":[{"source":"203.0.113.0/24","ttl_seconds":60}]}`)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := "https://" + ln.Addr().String()
	ln.Close()
	bl := &blocklist{added: map[netip.Addr]time.Duration{}}
	n := k.newNode(t, []string{good, bad, gone}, bl, []Block{{Source: netip.MustParsePrefix("198.51.100.9/32"), Left: time.Minute}})
	host := func(u string) string { return strings.TrimPrefix(u, "https://") }

	st := n.Status()
	if len(st.Peers) != 3 || st.Peers[0].Peer != host(good) || st.Peers[0].Up || !st.Peers[0].LastPull.IsZero() {
		t.Fatalf("before any pull: %+v", st.Peers)
	}
	start := time.Now()
	for _, u := range []string{good, bad, gone} {
		n.pull(context.Background(), u, host(u))
	}
	n.pull(context.Background(), good, host(good)) // the same blocks again: not received twice
	st = n.Status()
	g, b, d := st.Peers[0], st.Peers[1], st.Peers[2]
	if !g.Up || g.Result != ResultOK || g.Error != "" || g.Received != 2 || g.Holding != 2 || g.LastPull.Before(start) {
		t.Errorf("good peer: %+v, want up, ok, 2 received and held", g)
	}
	if !b.Up || b.Result != ResultBroad || !strings.Contains(b.Error, "broader") || b.Received != 0 || b.Holding != 0 {
		t.Errorf("peer with a refused list: %+v, want up, broad_prefix with its reason, nothing taken", b)
	}
	if d.Up || d.Result != ResultUnreachable || d.Error == "" || d.LastPull.Before(start) {
		t.Errorf("peer that is gone: %+v, want down, unreachable", d)
	}

	if st.Served != 0 || !st.LastServed.IsZero() {
		t.Errorf("served before any peer pulled: %d at %v", st.Served, st.LastServed)
	}
	srv := k.newNode(t, nil, bl, []Block{{Source: netip.MustParsePrefix("198.51.100.9/32"), Left: time.Minute}})
	hs := httptest.NewUnstartedServer(http.HandlerFunc(srv.serve))
	hs.TLS = srv.server
	hs.StartTLS()
	defer hs.Close()
	puller := k.newNode(t, []string{hs.URL}, &blocklist{added: map[netip.Addr]time.Duration{}}, nil)
	puller.pull(context.Background(), hs.URL, host(hs.URL))
	if p := puller.Status().Peers[0]; p.Result != ResultOK || p.Received != 1 {
		t.Fatalf("pull from the serving node: %+v", p)
	}
	if st := srv.Status(); st.Served != 1 || st.LastServed.Before(start) {
		t.Errorf("served %d at %v after a peer's pull, want 1 now", st.Served, st.LastServed)
	}
}
