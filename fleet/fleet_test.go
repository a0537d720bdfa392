package fleet

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// blocklist records what a node applies: the daemon's is the nftables
// blocklist, tested with real peers in test/fleet_test.go.
type blocklist struct {
	mu    sync.Mutex
	added map[netip.Addr]time.Duration
}

func (b *blocklist) apply(a netip.Addr, d time.Duration) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.added[a] = d
	return nil
}

func (b *blocklist) len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.added)
}

type fleetPKI struct {
	ca   *certstest.CA
	node *certstest.Leaf
}

func newFleetPKI(t *testing.T) fleetPKI {
	ca := certstest.NewCA(t, "fleet")
	return fleetPKI{ca: ca, node: ca.Issue(t, &x509.Certificate{
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	})}
}

// peer is a real mutual-TLS server of the fleet CA answering body.
func (k fleetPKI) peer(t *testing.T, body string) string {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != Path || len(r.TLS.PeerCertificates) == 0 {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, body)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{k.node.TLS}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: k.ca.Pool()}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.URL
}

func (k fleetPKI) newNode(t *testing.T, peers []string, bl *blocklist, local []Block) *Node {
	n, err := New(Config{Cert: k.node.CertFile, Key: k.node.KeyFile, PeerCA: k.ca.CertFile, Peers: peers,
		PullInterval: time.Second, BlockTTL: 10 * time.Minute, MaxBlocks: 3,
		Local: func() []Block { return local }, Apply: bl.apply})
	if err != nil {
		t.Fatal(err)
	}
	n.SetSourceBits(32, 64)
	return n
}

// TestPullRefusesBadPeers: a peer that sends garbage, too many blocks, a
// prefix broader than one source, a bad TTL, or that cannot be reached or
// be verified changes nothing and is counted under its reason; a good
// list is applied with its TTL capped by block_ttl.
func TestPullRefusesBadPeers(t *testing.T) {
	k := newFleetPKI(t)
	cases := []struct {
		name, body, result string
	}{
		{"garbage", "<html>hello</html>", ResultBadResponse},
		{"unknown field", `{"blocks":[],"extra":1}`, ResultBadResponse},
		{"too many", `{"blocks":[{"source":"203.0.113.1/32","ttl_seconds":60},{"source":"203.0.113.2/32","ttl_seconds":60},{"source":"203.0.113.3/32","ttl_seconds":60},{"source":"203.0.113.4/32","ttl_seconds":60}]}`, ResultTooMany},
		{"broad v4", `{"blocks":[{"source":"203.0.113.1/32","ttl_seconds":60},{"source":"203.0.113.0/24","ttl_seconds":60}]}`, ResultBroad},
		{"broad v6", `{"blocks":[{"source":"2001:db8::/48","ttl_seconds":60}]}`, ResultBroad},
		{"not canonical", `{"blocks":[{"source":"203.0.113.1/24","ttl_seconds":60}]}`, ResultBadResponse},
		{"zero ttl", `{"blocks":[{"source":"203.0.113.1/32","ttl_seconds":0}]}`, ResultBadResponse},
		{"mapped", `{"blocks":[{"source":"::ffff:203.0.113.1/128","ttl_seconds":60}]}`, ResultBadResponse},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			url := k.peer(t, tc.body)
			bl := &blocklist{added: map[netip.Addr]time.Duration{}}
			n := k.newNode(t, []string{url}, bl, nil)
			peer := strings.TrimPrefix(url, "https://")
			n.pull(context.Background(), url, peer)
			if bl.len() != 0 {
				t.Errorf("applied %d blocks of a refused list", bl.len())
			}
			if got := testutil.ToFloat64(n.m.pulls.WithLabelValues(peer, tc.result)); got != 1 {
				t.Errorf("pulls_total{result=%q} = %v, want 1", tc.result, got)
			}
		})
	}
	t.Run("unreachable and wrong certificate", func(t *testing.T) {
		other := newFleetPKI(t)
		stranger := other.peer(t, `{"blocks":[{"source":"203.0.113.9/32","ttl_seconds":60}]}`)
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		gone := "https://" + ln.Addr().String()
		ln.Close()
		bl := &blocklist{added: map[netip.Addr]time.Duration{}}
		n := k.newNode(t, []string{stranger, gone}, bl, nil)
		for _, u := range []string{stranger, gone} {
			peer := strings.TrimPrefix(u, "https://")
			n.pull(context.Background(), u, peer)
			if got := testutil.ToFloat64(n.m.pulls.WithLabelValues(peer, ResultUnreachable)); got != 1 {
				t.Errorf("%s: unreachable = %v", u, got)
			}
			if got := testutil.ToFloat64(n.m.up.WithLabelValues(peer)); got != 0 {
				t.Errorf("%s: peer_up = %v", u, got)
			}
		}
		if bl.len() != 0 {
			t.Errorf("applied blocks from a peer of another CA")
		}
	})
	t.Run("good list", func(t *testing.T) {
		url := k.peer(t, `{"blocks":[{"source":"203.0.113.1/32","ttl_seconds":60},{"source":"2001:db8:1:2::/64","ttl_seconds":999999}]}`)
		bl := &blocklist{added: map[netip.Addr]time.Duration{}}
		n := k.newNode(t, []string{url}, bl, nil)
		peer := strings.TrimPrefix(url, "https://")
		n.pull(context.Background(), url, peer)
		n.pull(context.Background(), url, peer)
		if bl.added[netip.MustParseAddr("203.0.113.1")] != time.Minute || bl.added[netip.MustParseAddr("2001:db8:1:2::")] != 10*time.Minute {
			t.Errorf("applied %v, want 1m and 10m (block_ttl caps)", bl.added)
		}
		if got := testutil.ToFloat64(n.m.received.WithLabelValues(peer)); got != 2 {
			t.Errorf("blocks_received_total = %v, want 2 (a block sent again is not counted again)", got)
		}
	})
}

// TestServeRequiresPeerCertificate: the node serves its local blocks to a
// client of the fleet CA and refuses the handshake of any other.
func TestServeRequiresPeerCertificate(t *testing.T) {
	k := newFleetPKI(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	bl := &blocklist{added: map[netip.Addr]time.Duration{}}
	local := []Block{{Source: netip.MustParsePrefix("203.0.113.66/32"), Left: 90 * time.Second}}
	n, err := New(Config{Listen: addr, Cert: k.node.CertFile, Key: k.node.KeyFile, PeerCA: k.ca.CertFile,
		PullInterval: time.Second, BlockTTL: time.Minute, MaxBlocks: 10, Local: func() []Block { return local }, Apply: bl.apply})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	defer func() { cancel(); <-done }()
	get := func(cert tls.Certificate) (string, error) {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: k.ca.Pool(), Certificates: []tls.Certificate{cert}}}
		defer tr.CloseIdleConnections()
		var last error
		for range 50 { // until the listener is up
			resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("https://" + addr + Path)
			if err == nil {
				defer resp.Body.Close()
				b, err := io.ReadAll(resp.Body)
				return string(b), err
			}
			last = err
			if !strings.Contains(err.Error(), "connection refused") {
				return "", err
			}
			time.Sleep(20 * time.Millisecond)
		}
		return "", last
	}
	body, err := get(k.node.TLS)
	if err != nil || !strings.Contains(body, `{"source":"203.0.113.66/32","ttl_seconds":90}`) {
		t.Fatalf("peer of the fleet CA: %q %v", body, err)
	}
	stranger := certstest.NewCA(t, "tenant").Client(t, "acme", "spiffe://acme/cloud")
	if body, err := get(stranger.TLS); err == nil {
		t.Fatalf("a client of another CA was served: %q", body)
	}
}

// TestPullFollowsNoRedirect: a peer answering with a redirect, here to a
// plain-HTTP server no certificate proves, is counted unreachable and
// nothing of the list behind the redirect is applied: a pull takes only
// what the peer whose certificate was verified answers itself.
func TestPullFollowsNoRedirect(t *testing.T) {
	k := newFleetPKI(t)
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"blocks":[{"source":"203.0.113.5/32","ttl_seconds":60}]}`)
	}))
	t.Cleanup(plain.Close)
	srv := httptest.NewUnstartedServer(http.RedirectHandler(plain.URL+Path, http.StatusFound))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{k.node.TLS}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: k.ca.Pool()}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	bl := &blocklist{added: map[netip.Addr]time.Duration{}}
	n := k.newNode(t, []string{srv.URL}, bl, nil)
	peer := strings.TrimPrefix(srv.URL, "https://")
	n.pull(context.Background(), srv.URL, peer)
	if bl.len() != 0 {
		t.Errorf("applied %v from behind a redirect", bl.added)
	}
	if got := testutil.ToFloat64(n.m.pulls.WithLabelValues(peer, ResultUnreachable)); got != 1 {
		t.Errorf("pulls_total{result=unreachable} = %v, want 1", got)
	}
}
