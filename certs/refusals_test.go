package certs

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
)

// testSource is the client address the tests report handshakes from.
var testSource = netip.MustParseAddrPort("192.0.2.7:50000")

// TestRefusals: refused handshakes are remembered newest first with their
// listener, source, result, reason and the refused certificate's subject,
// issuer and fingerprint; a successful one is not; only the last
// RefusalsKept stay.
func TestRefusals(t *testing.T) {
	k := newPKI(t)
	now := time.Now().UTC().Truncate(time.Second)
	m := newManager(t, Config{Now: func() time.Time { return now }}, k.policy)
	srv, _ := m.TLSConfig("web")
	try := func(cert *certstest.Leaf, src string) {
		t.Helper()
		r := handshake(t, srv, k.clientConfig(cert), false)
		if r.serverErr != nil {
			m.HandshakeFailed("web", netip.MustParseAddrPort(src), r.server, r.serverErr)
		}
	}
	try(k.revoked, "192.0.2.10:40001")
	try(k.acme, "192.0.2.11:40002") // accepted: not a refusal
	try(k.stranger, "[2001:db8::12]:40003")
	try(nil, "192.0.2.13:40004")
	got := m.Refusals()
	if len(got) != 3 {
		t.Fatalf("%d refusals, want 3: %+v", len(got), got)
	}
	want := []Refusal{
		{Time: now, Listener: "web", Source: "192.0.2.13:40004", Result: ResultNoCert},
		{Time: now, Listener: "web", Source: "[2001:db8::12]:40003", Result: ResultUnknownCA,
			Subject: k.stranger.Cert.Subject.String(), Issuer: k.stranger.Cert.Issuer.String(), FingerprintSHA256: FingerprintSHA256(k.stranger.Cert)},
		{Time: now, Listener: "web", Source: "192.0.2.10:40001", Result: ResultRevoked, Tenant: "acme",
			Subject: k.revoked.Cert.Subject.String(), Issuer: k.revoked.Cert.Issuer.String(), FingerprintSHA256: FingerprintSHA256(k.revoked.Cert)},
	}
	for i, w := range want {
		g := got[i]
		if g.Reason == "" {
			t.Errorf("refusal %d has no reason: %+v", i, g)
		}
		g.Reason = ""
		if g != w {
			t.Errorf("refusal %d:\n got %+v\nwant %+v", i, g, w)
		}
	}
	if !strings.Contains(got[2].Reason, "on CRL") {
		t.Errorf("revoked reason %q does not name the CRL", got[2].Reason)
	}
	b, err := json.Marshal(got[2])
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"time":"` + now.Format(time.RFC3339) + `"`, `"listener":"web"`, `"source":"192.0.2.10:40001"`, `"result":"revoked"`,
		`"tenant":"acme"`, `"reason":`, `"subject":`, `"issuer":`, `"fingerprint_sha256":"` + FingerprintSHA256(k.revoked.Cert) + `"`} {
		if !strings.Contains(string(b), key) {
			t.Errorf("JSON %s lacks %s", b, key)
		}
	}

	for range RefusalsKept + 5 {
		try(k.stranger, "192.0.2.14:40005")
	}
	// The ring holds the last RefusalsKept; after them come the last
	// refusal of each result pushed out of it.
	got = m.Refusals()
	if len(got) != RefusalsKept+2 || got[RefusalsKept-1].Source != "192.0.2.14:40005" ||
		got[RefusalsKept].Result != ResultNoCert || got[RefusalsKept+1].Result != ResultRevoked {
		t.Errorf("after %d more refusals: %d kept, want the last %d, then the last no_cert and revoked: %+v", RefusalsKept+5, len(got), RefusalsKept, got)
	}
}

// TestRefusalNamesPrintable: a certificate's names are the client's words;
// control characters do not reach a terminal or a log, and a long name is cut.
func TestRefusalNamesPrintable(t *testing.T) {
	if got := printable("CN=evil\x1b[2J\r\nroot"); got != "CN=evil?[2J??root" {
		t.Errorf("printable = %q", got)
	}
	long := printable(strings.Repeat("é", 1000))
	if n := len([]rune(long)); n != maxPrintable+1 || !strings.HasSuffix(long, "…") {
		t.Errorf("long name kept %d characters", n)
	}
}

// TestRefusalLogArgs: the log line's fields, empty ones left out.
func TestRefusalLogArgs(t *testing.T) {
	r := Refusal{Result: ResultRevoked, Tenant: "acme", Reason: "on CRL", Subject: "CN=a", Issuer: "CN=b", FingerprintSHA256: "ab"}
	got := []any{"result", "revoked", "tenant", "acme", "reason", "on CRL", "subject", "CN=a", "issuer", "CN=b", "fingerprint_sha256", "ab"}
	if args := r.LogArgs(); len(args) != len(got) {
		t.Fatalf("LogArgs = %v", args)
	}
	for i, a := range r.LogArgs() {
		if a != got[i] {
			t.Errorf("LogArgs[%d] = %v, want %v", i, a, got[i])
		}
	}
	if args := (Refusal{Result: ResultNoCert}).LogArgs(); len(args) != 2 {
		t.Errorf("no certificate: LogArgs = %v", args)
	}
}

// TestClientClosed: a client that closes or resets the connection during
// the handshake before sending a certificate (health checkers and load
// generators do) is counted as client_closed and is no refusal.
func TestClientClosed(t *testing.T) {
	k := newPKI(t)
	m := newManager(t, Config{}, k.policy)
	srv, _ := m.TLSConfig("web")
	for _, tc := range []struct {
		name   string
		client func(c *net.TCPConn)
	}{
		{"connect and close", func(c *net.TCPConn) { c.Close() }},
		{"connect and reset", func(c *net.TCPConn) { c.SetLinger(0); c.Close() }},
		{"hello, then close when asked for a certificate", func(c *net.TCPConn) {
			cc := k.clientConfig(nil)
			cc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				c.Close() // no alert can follow
				return nil, errors.New("gone")
			}
			tls.Client(c, cc).Handshake()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := counter(t, m, "web", "none", ResultClientClosed)
			cs, err := serverHandshake(t, srv, tc.client)
			if got := ResultOf(err); got != ResultClientClosed {
				t.Fatalf("result %s (err %v), want client_closed", got, err)
			}
			if r := m.HandshakeFailed("web", testSource, cs, err); r.Result != ResultClientClosed {
				t.Errorf("HandshakeFailed = %+v", r)
			}
			if after := counter(t, m, "web", "none", ResultClientClosed); after != before+1 {
				t.Errorf("client_closed counter %v → %v, want +1", before, after)
			}
			if got := m.Refusals(); len(got) != 0 {
				t.Errorf("a client that closed is listed as refused: %+v", got)
			}
		})
	}
}

// TestLastRefusalOfEachResult: a stranger's connections without a
// certificate fill the ring, and the admin still finds the last refusal of
// every other kind after them.
func TestLastRefusalOfEachResult(t *testing.T) {
	k := newPKI(t)
	m := newManager(t, Config{}, k.policy)
	srv, _ := m.TLSConfig("web")
	for _, leaf := range []*certstest.Leaf{k.revoked, k.stranger, nil} {
		r := handshake(t, srv, k.clientConfig(leaf), false)
		m.HandshakeFailed("web", testSource, r.server, r.serverErr)
	}
	for range RefusalsKept {
		r := handshake(t, srv, k.clientConfig(nil), false)
		m.HandshakeFailed("web", testSource, r.server, r.serverErr)
	}
	got := m.Refusals()
	if len(got) != RefusalsKept+2 {
		var results []Result
		for _, r := range got {
			results = append(results, r.Result)
		}
		t.Fatalf("refusals %v, want the last %d and the last of unknown_ca and revoked", results, RefusalsKept)
	}
	for i, r := range got[:RefusalsKept] {
		if r.Result != ResultNoCert {
			t.Errorf("refusal %d: %s, want no_cert", i, r.Result)
		}
	}
	if a, b := got[RefusalsKept], got[RefusalsKept+1]; a.Result != ResultUnknownCA || a.FingerprintSHA256 != FingerprintSHA256(k.stranger.Cert) ||
		b.Result != ResultRevoked || b.FingerprintSHA256 != FingerprintSHA256(k.revoked.Cert) {
		t.Errorf("after the ring: %+v, %+v; want the stranger's unknown_ca, then the revoked one", a, b)
	}
}

// serverHandshake accepts one loopback connection, lets client act on its
// end, and returns the server's state and handshake error.
func serverHandshake(t *testing.T, srv *tls.Config, client func(*net.TCPConn)) (tls.ConnectionState, error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err == nil {
			client(c.(*net.TCPConn))
			c.Close()
		}
	}()
	raw, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	sc := tls.Server(raw, srv)
	sc.SetDeadline(time.Now().Add(10 * time.Second))
	err = sc.Handshake()
	return sc.ConnectionState(), err
}
