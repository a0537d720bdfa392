package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/internal/testkit"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
	"github.com/gatehouse-dmz/gatehouse/policy"
)

// pki is a whole test world: a server CA and listener certificate and a few
// tenants with their own CAs, CRLs and identity rules.
type pki struct {
	serverCA  *certstest.CA
	server    *certstest.Leaf
	acmeCA    *certstest.CA
	globexCA  *certstest.CA
	pinnedCA  *certstest.CA
	twinCA    *certstest.CA
	opsCA     *certstest.CA
	acme      *certstest.Leaf // spiffe://acme/cloud
	acmeOther *certstest.Leaf // spiffe://other/cloud: wrong identity
	revoked   *certstest.Leaf
	expired   *certstest.Leaf
	future    *certstest.Leaf
	globex    *certstest.Leaf
	pinned    *certstest.Leaf
	pinnedBad *certstest.Leaf // same CA, other fingerprint
	twin      *certstest.Leaf
	opsDNS    *certstest.Leaf
	opsOU     *certstest.Leaf
	stranger  *certstest.Leaf // from a CA no tenant trusts
	acmeCRL   string
	policy    *policy.Policy
}

func newPKI(t testing.TB) *pki {
	t.Helper()
	k := &pki{}
	k.serverCA = certstest.NewCA(t, "server CA")
	k.server = k.serverCA.Server(t, "gw.example", "127.0.0.1")
	k.acmeCA = certstest.NewCA(t, "acme CA")
	k.globexCA = certstest.NewCA(t, "globex CA")
	k.pinnedCA = certstest.NewCA(t, "pinned CA")
	k.twinCA = certstest.NewCA(t, "twin CA")
	k.opsCA = certstest.NewCA(t, "ops CA")
	k.acme = k.acmeCA.Client(t, "acme cloud", "spiffe://acme/cloud")
	k.acmeOther = k.acmeCA.Client(t, "acme other", "spiffe://other/cloud")
	k.revoked = k.acmeCA.Client(t, "acme revoked", "spiffe://acme/old")
	now := time.Now()
	k.expired = k.acmeCA.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "expired"},
		URIs: k.acme.Cert.URIs, NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	k.future = k.acmeCA.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "future"},
		URIs: k.acme.Cert.URIs, NotBefore: now.Add(time.Hour), NotAfter: now.Add(48 * time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	k.globex = k.globexCA.Client(t, "globex")
	k.pinned = k.pinnedCA.Client(t, "pinned")
	k.pinnedBad = k.pinnedCA.Client(t, "pinned")
	k.twin = k.twinCA.Client(t, "twin")
	k.opsDNS = k.opsCA.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "x"}, DNSNames: []string{"Batch.OPS.example"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	k.opsOU = k.opsCA.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "y", OrganizationalUnit: []string{"payments"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	k.stranger = certstest.NewCA(t, "stranger CA").Client(t, "stranger", "spiffe://acme/cloud")
	k.acmeCRL = k.acmeCA.CRL(t, filepath.Join(t.TempDir(), "acme.crl"), now.Add(24*time.Hour), k.revoked)

	k.policy = &policy.Policy{
		Generation: 1,
		Tenants: []policy.Tenant{
			{ID: "acme", ClientCA: k.acmeCA.CertFile, CRL: k.acmeCRL,
				Identities: policy.Identities{URISAN: []string{"spiffe://acme/*"}}},
			{ID: "globex", ClientCA: k.globexCA.CertFile},
			{ID: "pinned", ClientCA: k.pinnedCA.CertFile,
				Identities: policy.Identities{FingerprintSHA256: []string{strings.ToUpper(FingerprintSHA256(k.pinned.Cert))}}},
			{ID: "twin-a", ClientCA: k.twinCA.CertFile},
			{ID: "twin-b", ClientCA: k.twinCA.CertFile},
			{ID: "ops", ClientCA: k.opsCA.CertFile,
				Identities: policy.Identities{DNSSAN: []string{"*.ops.example"}, OrganizationalUnit: []string{"payments"}}},
		},
		Listeners: []policy.Listener{
			{Name: "web", Port: 443, Protocol: policy.ProtoHTTPS, ServerCert: k.server.CertFile, ServerKey: k.server.KeyFile},
			{Name: "mainframe", Port: 992, Protocol: policy.ProtoTN3270, ServerCert: k.server.CertFile, ServerKey: k.server.KeyFile},
		},
	}
	return k
}

func newManager(t testing.TB, cfg Config, p *policy.Policy) *Manager {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Apply(p); err != nil {
		t.Fatal(err)
	}
	return m
}

// clientConfig trusts the server CA and presents cert (none when nil).
func (k *pki) clientConfig(cert *certstest.Leaf) *tls.Config {
	c := &tls.Config{RootCAs: k.serverCA.Pool(), ServerName: "gw.example"}
	if cert != nil {
		c.Certificates = []tls.Certificate{cert.TLS}
	}
	return c
}

// result is what both ends of one handshake saw.
type result struct {
	serverErr error
	server    tls.ConnectionState // also after a failure
	client    tls.ConnectionState
	sconn     *tls.Conn // open when keep was set and the handshake worked
	cconn     *tls.Conn
}

// handshake runs one TLS handshake over loopback TCP. The server end writes a
// byte after a successful handshake and the client reads it, so that TLS 1.3
// session tickets reach the client and a refusal's alert is consumed.
func handshake(t testing.TB, server *tls.Config, client *tls.Config, keep bool) result {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type cres struct {
		conn *tls.Conn
		err  error
	}
	done := make(chan cres, 1)
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			done <- cres{err: err}
			return
		}
		tc := tls.Client(c, client)
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		if err := tc.Handshake(); err != nil {
			c.Close()
			done <- cres{err: err}
			return
		}
		var b [1]byte
		_, err = io.ReadFull(tc, b[:])
		tc.SetDeadline(time.Time{})
		done <- cres{conn: tc, err: err}
	}()
	raw, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	sc := tls.Server(raw, server)
	sc.SetDeadline(time.Now().Add(10 * time.Second))
	var r result
	r.serverErr = sc.Handshake()
	if r.serverErr == nil {
		_, r.serverErr = sc.Write([]byte{'x'})
	}
	sc.SetDeadline(time.Time{})
	cr := <-done
	// On a failure too: PeerCertificates holds what the client sent.
	r.server = sc.ConnectionState()
	if r.serverErr == nil {
		if cr.err != nil {
			t.Fatalf("server handshake ok, client: %v", cr.err)
		}
		r.client = cr.conn.ConnectionState()
	}
	if keep && r.serverErr == nil {
		r.sconn, r.cconn = sc, cr.conn
		t.Cleanup(func() { sc.Close(); cr.conn.Close() })
	} else {
		sc.Close()
		if cr.conn != nil {
			cr.conn.Close()
		}
	}
	return r
}

func counter(t testing.TB, m *Manager, listener, tenant string, res Result) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	if err := reg.Register(m); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "gatehouse_tls_handshakes_total" {
			continue
		}
	metrics:
		for _, mt := range mf.GetMetric() {
			want := map[string]string{"listener": listener, "tenant": tenant, "result": string(res)}
			for _, lp := range mt.GetLabel() {
				if want[lp.GetName()] != lp.GetValue() {
					continue metrics
				}
			}
			return mt.GetCounter().GetValue()
		}
	}
	return 0
}

func TestHandshakeMatrix(t *testing.T) {
	k := newPKI(t)
	m := newManager(t, Config{StateDir: t.TempDir()}, k.policy)
	srv, err := m.TLSConfig("web")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		cert       *certstest.Leaf
		minV, maxV uint16
		noSNI      bool
		want       Result
		tenant     string
	}{
		{name: "acme by URI wildcard", cert: k.acme, want: ResultOK, tenant: "acme"},
		{name: "acme TLS 1.2", cert: k.acme, maxV: tls.VersionTLS12, want: ResultOK, tenant: "acme"},
		{name: "no SNI gets the default certificate", cert: k.acme, noSNI: true, want: ResultOK, tenant: "acme"},
		{name: "globex, any cert of its CA", cert: k.globex, want: ResultOK, tenant: "globex"},
		{name: "pinned fingerprint", cert: k.pinned, want: ResultOK, tenant: "pinned"},
		{name: "ops by DNS SAN", cert: k.opsDNS, want: ResultOK, tenant: "ops"},
		{name: "ops by OU", cert: k.opsOU, want: ResultOK, tenant: "ops"},
		{name: "no certificate", want: ResultNoCert},
		{name: "no certificate TLS 1.2", maxV: tls.VersionTLS12, want: ResultNoCert},
		{name: "unknown CA", cert: k.stranger, want: ResultUnknownCA},
		{name: "expired", cert: k.expired, want: ResultExpired},
		{name: "not yet valid", cert: k.future, want: ResultNotYetValid},
		{name: "revoked", cert: k.revoked, want: ResultRevoked, tenant: "acme"},
		{name: "wrong identity", cert: k.acmeOther, want: ResultNoTenant},
		{name: "wrong fingerprint", cert: k.pinnedBad, want: ResultNoTenant},
		{name: "two tenants share a CA", cert: k.twin, want: ResultAmbiguousTenant},
		{name: "TLS 1.0 client", cert: k.acme, minV: tls.VersionTLS10, maxV: tls.VersionTLS10, want: ResultProtocolVersion},
		{name: "TLS 1.1 client", cert: k.acme, minV: tls.VersionTLS10, maxV: tls.VersionTLS11, want: ResultProtocolVersion},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cc := k.clientConfig(tc.cert)
			cc.MinVersion, cc.MaxVersion = tc.minV, tc.maxV
			if tc.noSNI {
				// An IP address as ServerName sends no SNI.
				cc.ServerName = "127.0.0.1"
			}
			label := tc.tenant
			if label == "" || tc.want != ResultOK && tc.want != ResultRevoked {
				label = "none"
			}
			before := counter(t, m, "web", label, tc.want)
			r := handshake(t, srv, cc, false)
			if r.serverErr != nil {
				m.HandshakeFailed("web", testSource, r.server, r.serverErr)
			} else if _, err := m.HandshakeDone("web", testSource, r.server); err != nil {
				t.Fatalf("HandshakeDone: %v", err)
			}
			if got := ResultOf(r.serverErr); got != tc.want {
				t.Fatalf("result %s, want %s (err %v)", got, tc.want, r.serverErr)
			}
			if after := counter(t, m, "web", label, tc.want); after != before+1 {
				t.Errorf("counter {web,%s,%s} went %v → %v, want +1", label, tc.want, before, after)
			}
			if tc.want != ResultOK {
				return
			}
			if tc.noSNI && r.server.ServerName != "" {
				t.Errorf("server saw SNI %q", r.server.ServerName)
			}
			id, err := m.Identify(r.server)
			if err != nil {
				t.Fatalf("Identify: %v", err)
			}
			if id.Tenant != tc.tenant || id.FingerprintSHA256 != FingerprintSHA256(tc.cert.Cert) ||
				id.Subject != tc.cert.Cert.Subject.String() || !id.NotAfter.Equal(tc.cert.Cert.NotAfter) {
				t.Errorf("Identify = %+v", id)
			}
			if r.server.Version == tls.VersionTLS12 {
				if !isAllowedSuite(r.server.CipherSuite) {
					t.Errorf("TLS 1.2 suite %s not ECDHE+AEAD", tls.CipherSuiteName(r.server.CipherSuite))
				}
			}
		})
	}
}

func isAllowedSuite(id uint16) bool {
	for _, s := range cipherSuites {
		if s == id {
			return true
		}
	}
	return false
}

// TestTLS12SuitesOnly offers the server only non-AEAD or non-ECDHE suites.
func TestTLS12SuitesOnly(t *testing.T) {
	k := newPKI(t)
	m := newManager(t, Config{}, k.policy)
	srv, _ := m.TLSConfig("web")
	cc := k.clientConfig(k.acme)
	cc.MaxVersion = tls.VersionTLS12
	cc.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_RSA_WITH_AES_128_GCM_SHA256}
	if r := handshake(t, srv, cc, false); r.serverErr == nil {
		t.Fatalf("handshake with %s succeeded", tls.CipherSuiteName(r.server.CipherSuite))
	}
}

// TestResumptionIsAuthorised shows that resumed sessions pass through
// VerifyConnection: resumption works, and stops working for a certificate
// revoked in between, on both TLS versions.
func TestResumptionIsAuthorised(t *testing.T) {
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(v), func(t *testing.T) {
			k := newPKI(t)
			m := newManager(t, Config{StateDir: t.TempDir()}, k.policy)
			srv, _ := m.TLSConfig("web")
			cc := k.clientConfig(k.acme)
			cc.MaxVersion = v
			cc.ClientSessionCache = tls.NewLRUClientSessionCache(8)
			if r := handshake(t, srv, cc, false); r.serverErr != nil || r.server.DidResume {
				t.Fatalf("first handshake: err %v resumed %v", r.serverErr, r.server.DidResume)
			}
			r := handshake(t, srv, cc, false)
			if r.serverErr != nil || !r.server.DidResume {
				t.Fatalf("second handshake: err %v resumed %v, want a resumed session", r.serverErr, r.server.DidResume)
			}
			// Revoke the certificate; the client still holds a ticket.
			k.acmeCA.CRL(t, k.acmeCRL, time.Now().Add(time.Hour), k.acme)
			if err := m.Reload(); err != nil {
				t.Fatal(err)
			}
			r = handshake(t, srv, cc, false)
			if ResultOf(r.serverErr) != ResultRevoked {
				t.Fatalf("resumption after revocation: %v, want revoked", r.serverErr)
			}
			// And a tenant removed from the policy cannot come back either.
			cg := k.clientConfig(k.globex)
			cg.MaxVersion = v
			cg.ClientSessionCache = tls.NewLRUClientSessionCache(8)
			if r := handshake(t, srv, cg, false); r.serverErr != nil {
				t.Fatal(r.serverErr)
			}
			p2 := clonePolicy(k.policy)
			p2.Tenants = p2.Tenants[:1]
			if err := m.Apply(p2); err != nil {
				t.Fatal(err)
			}
			if r := handshake(t, srv, cg, false); ResultOf(r.serverErr) != ResultUnknownCA {
				t.Fatalf("resumption of a removed tenant: %v, want unknown_ca", r.serverErr)
			}
		})
	}
}

// TestTicketKeys: keys persist in the state directory (a restarted manager
// resumes sessions) and each listener has its own.
func TestTicketKeys(t *testing.T) {
	k := newPKI(t)
	dir := t.TempDir()
	m1 := newManager(t, Config{StateDir: dir}, k.policy)
	srv1, _ := m1.TLSConfig("web")
	cc := k.clientConfig(k.acme)
	cc.ClientSessionCache = tls.NewLRUClientSessionCache(8)
	if r := handshake(t, srv1, cc, false); r.serverErr != nil {
		t.Fatal(r.serverErr)
	}
	fi, err := os.Stat(filepath.Join(dir, "tls-tickets", "web"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("ticket key file mode %v, want 0600", fi.Mode().Perm())
	}
	m2 := newManager(t, Config{StateDir: dir}, k.policy)
	srv2, _ := m2.TLSConfig("web")
	if r := handshake(t, srv2, cc, false); r.serverErr != nil || !r.server.DidResume {
		t.Fatalf("restarted manager: err %v resumed %v, want resumed", r.serverErr, r.server.DidResume)
	}
	other, _ := m2.TLSConfig("mainframe")
	if r := handshake(t, other, cc, false); r.serverErr != nil || r.server.DidResume {
		t.Fatalf("other listener: err %v resumed %v, want a full handshake", r.serverErr, r.server.DidResume)
	}
}

func TestTicketRotation(t *testing.T) {
	k := newPKI(t)
	dir := t.TempDir()
	var now atomic.Int64
	now.Store(time.Now().Unix())
	clock := func() time.Time { return time.Unix(now.Load(), 0) }
	p := clonePolicy(k.policy)
	p.TLS.TicketRotation = time.Hour
	m := newManager(t, Config{StateDir: dir, Now: clock}, p)
	outer, _ := m.TLSConfig("web")
	// Wrap it the way a proxy does (clone, clone the per-handshake config
	// too), so that rotation must reach configs we never handed out.
	srv := outer.Clone()
	srv.GetConfigForClient = func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
		c, err := outer.GetConfigForClient(chi)
		if err != nil {
			return nil, err
		}
		c = c.Clone()
		c.NextProtos = []string{"x"}
		return c, nil
	}
	read := func() string {
		b, err := os.ReadFile(filepath.Join(dir, "tls-tickets", "web"))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	first := read()
	cc := k.clientConfig(k.acme)
	cc.MaxVersion = tls.VersionTLS12 // a TLS 1.2 ticket carries no age limit of its own
	cc.ClientSessionCache = tls.NewLRUClientSessionCache(8)
	handshake(t, srv, cc, false)
	prev := k.clientConfig(k.acme)
	prev.MaxVersion = tls.VersionTLS12
	prev.ClientSessionCache = tls.NewLRUClientSessionCache(8)
	handshake(t, srv, prev, false)
	for i := 1; i <= keepTicketKeys; i++ {
		now.Add(3601)
		m.rotateTickets()
		if lines := strings.Count(read(), "\n"); lines != min(i+1, keepTicketKeys) {
			t.Fatalf("after %d rotations %d keys", i, lines)
		}
		if i == 1 {
			// A ticket under the previous key still resumes.
			if r := handshake(t, srv, prev, false); !r.server.DidResume {
				t.Fatalf("ticket under the previous key did not resume: %v", r.serverErr)
			}
		}
	}
	if strings.Contains(read(), strings.Fields(first)[1]) {
		t.Fatal("first key still kept after three rotations")
	}
	if r := handshake(t, srv, cc, false); r.serverErr != nil || r.server.DidResume {
		t.Fatalf("ticket under a dropped key: err %v resumed %v, want full handshake", r.serverErr, r.server.DidResume)
	}
}

// TestReloadLiveConnection: a reload keeps established connections; new
// handshakes use the new server certificate.
func TestReloadLiveConnection(t *testing.T) {
	k := newPKI(t)
	m := newManager(t, Config{}, k.policy)
	srv, _ := m.TLSConfig("web")
	live := handshake(t, srv, k.clientConfig(k.acme), true)
	if live.serverErr != nil {
		t.Fatal(live.serverErr)
	}
	oldSerial := live.client.PeerCertificates[0].SerialNumber

	next := k.serverCA.Server(t, "gw.example")
	copyFile(t, next.CertFile, k.server.CertFile)
	copyFile(t, next.KeyFile, k.server.KeyFile)
	changed := make(chan struct{}, 1)
	m.OnChange(func() { changed <- struct{}{} })
	if err := m.Reload(); err != nil {
		t.Fatal(err)
	}
	<-changed

	// The live connection still carries data both ways.
	if _, err := live.cconn.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(live.sconn, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("live connection after reload: %q %v", buf, err)
	}
	if _, err := m.Identify(live.server); err != nil {
		t.Fatalf("live connection no longer identified: %v", err)
	}
	r := handshake(t, srv, k.clientConfig(k.acme), false)
	if r.serverErr != nil {
		t.Fatal(r.serverErr)
	}
	if got := r.client.PeerCertificates[0].SerialNumber; got.Cmp(next.Cert.SerialNumber) != 0 || got.Cmp(oldSerial) == 0 {
		t.Fatalf("new handshake got server serial %x, want the reloaded %x", got, next.Cert.SerialNumber)
	}
}

// TestWatchCRLUpdate: the watcher picks up a new CRL, fires OnChange, and
// Identify then refuses the live connection of the revoked certificate.
func TestWatchCRLUpdate(t *testing.T) {
	k := newPKI(t)
	m := newManager(t, Config{PollInterval: 10 * time.Millisecond}, k.policy)
	srv, _ := m.TLSConfig("web")
	live := handshake(t, srv, k.clientConfig(k.acme), true)
	if live.serverErr != nil {
		t.Fatal(live.serverErr)
	}
	changed := make(chan struct{}, 4)
	m.OnChange(func() { changed <- struct{}{} })
	ctx, cancel := context.WithCancel(context.Background())
	watchDone := make(chan error)
	go func() { watchDone <- m.Watch(ctx) }()
	defer func() {
		cancel()
		if err := <-watchDone; err != nil {
			t.Errorf("Watch: %v", err)
		}
	}()

	k.acmeCA.CRLDER(t, k.acmeCRL, time.Now().Add(time.Hour), k.revoked, k.acme)
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("OnChange did not fire after the CRL changed")
	}
	if _, err := m.Identify(live.server); ResultOf(err) != ResultRevoked {
		t.Fatalf("Identify of the live connection after revocation: %v, want revoked", err)
	}

	// A broken file is refused, the state stays, and OnChange stays quiet.
	certstest.WriteFile(t, k.acmeCRL, []byte("garbage"))
	time.Sleep(100 * time.Millisecond)
	select {
	case <-changed:
		t.Fatal("OnChange fired for a broken CRL")
	default:
	}
	if _, err := m.Identify(live.server); ResultOf(err) != ResultRevoked {
		t.Fatalf("after a broken CRL: %v, want the previous CRL still in force", err)
	}
	if r := handshake(t, srv, k.clientConfig(k.globex), false); r.serverErr != nil {
		t.Fatalf("handshakes stop after a broken CRL: %v", r.serverErr)
	}
}

func TestStaleCRL(t *testing.T) {
	k := newPKI(t)
	var now atomic.Int64
	now.Store(time.Now().Unix())
	clock := func() time.Time { return time.Unix(now.Load(), 0) }
	k.acmeCA.CRL(t, k.acmeCRL, time.Now().Add(time.Hour), k.revoked)
	for _, mode := range []policy.CRLStale{policy.CRLStaleFail, policy.CRLStaleWarn} {
		t.Run(string(mode), func(t *testing.T) {
			now.Store(time.Now().Unix())
			p := clonePolicy(k.policy)
			p.TLS.CRLStale = mode
			var logs testkit.LogBuffer
			m := newManager(t, Config{Now: clock, Logger: slog.New(slog.NewTextHandler(&logs, nil))}, p)
			fired := make(chan struct{}, 1)
			m.OnChange(func() { fired <- struct{}{} })
			cs := tls.ConnectionState{PeerCertificates: []*x509.Certificate{k.acme.Cert}}
			if _, err := m.Identify(cs); err != nil {
				t.Fatal(err)
			}
			now.Add(int64(2 * time.Hour / time.Second)) // past the CRL's nextUpdate
			m.checkStaleCRLs()
			select {
			case <-fired:
			default:
				t.Error("OnChange did not fire when the CRL went stale")
			}
			_, err := m.Identify(cs)
			if mode == "fail" && ResultOf(err) != ResultCRLStale {
				t.Fatalf("stale CRL, fail: %v", err)
			}
			if mode == "warn" && err != nil {
				t.Fatalf("stale CRL, warn: %v", err)
			}
			// The warning names the key that made it a warning.
			if mode == "warn" && !strings.Contains(logs.String(), "(tls.crl_stale: warn)") {
				t.Errorf("warn log does not name tls.crl_stale:\n%s", logs.String())
			}
		})
	}
}

// TestApplyErrorsKeepState: every broken input is refused with the file and
// tenant or listener named, and the old state keeps serving.
func TestApplyErrorsKeepState(t *testing.T) {
	k := newPKI(t)
	m := newManager(t, Config{}, k.policy)
	srv, _ := m.TLSConfig("web")
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	os.WriteFile(garbage, []byte("not pem"), 0o644)
	otherCRL := k.globexCA.CRL(t, filepath.Join(dir, "globex.crl"), time.Now().Add(time.Hour))

	tests := []struct {
		name  string
		edit  func(p *policy.Policy)
		want  []string
		sentl error
	}{
		{"missing CA", func(p *policy.Policy) { p.Tenants[0].ClientCA = filepath.Join(dir, "nope.pem") },
			[]string{`tenant "acme"`, "nope.pem"}, os.ErrNotExist},
		{"CA not PEM", func(p *policy.Policy) { p.Tenants[1].ClientCA = garbage },
			[]string{`tenant "globex"`, "garbage.pem"}, ErrNoCertificates},
		{"leaf as CA", func(p *policy.Policy) { p.Tenants[1].ClientCA = k.globex.CertFile },
			[]string{`tenant "globex"`, k.globex.CertFile}, ErrNotCA},
		{"CRL of another CA", func(p *policy.Policy) { p.Tenants[0].CRL = otherCRL },
			[]string{`tenant "acme"`, "globex.crl"}, ErrCRLSignature},
		{"CRL garbage", func(p *policy.Policy) { p.Tenants[0].CRL = garbage },
			[]string{`tenant "acme"`, "garbage.pem"}, nil},
		{"bad fingerprint", func(p *policy.Policy) { p.Tenants[2].Identities.FingerprintSHA256 = []string{"abc"} },
			[]string{`tenant "pinned"`, "abc"}, ErrBadFingerprint},
		{"missing server key", func(p *policy.Policy) { p.Listeners[0].ServerKey = filepath.Join(dir, "nokey") },
			[]string{`listener "web"`, "nokey"}, os.ErrNotExist},
		{"key does not fit", func(p *policy.Policy) { p.Listeners[0].ServerKey = k.acme.KeyFile },
			[]string{`listener "web"`, k.acme.KeyFile}, nil},
		{"no server cert", func(p *policy.Policy) { p.Listeners[1].ServerCert = "" },
			[]string{`listener "mainframe"`}, ErrNoServerCert},
		{"duplicate tenant", func(p *policy.Policy) { p.Tenants = append(p.Tenants, p.Tenants[0]) },
			[]string{`tenant "acme"`}, ErrDuplicate},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := clonePolicy(k.policy)
			p.Generation = 99
			tc.edit(p)
			err := m.Apply(p)
			if err == nil {
				t.Fatal("Apply succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
			if tc.sentl != nil && !errors.Is(err, tc.sentl) {
				t.Errorf("error %v is not %v", err, tc.sentl)
			}
			if m.state.Load().policy.Generation != 1 {
				t.Fatal("state swapped despite the error")
			}
			if r := handshake(t, srv, k.clientConfig(k.acme), false); r.serverErr != nil {
				t.Fatalf("old state no longer serves: %v", r.serverErr)
			}
		})
	}
}

func TestUnknownListenerFailsClosed(t *testing.T) {
	k := newPKI(t)
	m := newManager(t, Config{}, k.policy)
	if _, err := m.TLSConfig("nope"); !errors.Is(err, ErrUnknownListener) {
		t.Fatalf("TLSConfig(nope) = %v", err)
	}
	srv, _ := m.TLSConfig("mainframe")
	p := clonePolicy(k.policy)
	p.Listeners = p.Listeners[:1]
	if err := m.Apply(p); err != nil {
		t.Fatal(err)
	}
	r := handshake(t, srv, k.clientConfig(k.acme), false)
	if !errors.Is(r.serverErr, ErrUnknownListener) {
		t.Fatalf("handshake on a removed listener: %v", r.serverErr)
	}
}

func TestALPNCarriedThrough(t *testing.T) {
	k := newPKI(t)
	m := newManager(t, Config{}, k.policy)
	srv, _ := m.TLSConfig("web")
	srv.NextProtos = []string{"h2", "http/1.1"}
	cc := k.clientConfig(k.acme)
	cc.NextProtos = []string{"http/1.1"}
	r := handshake(t, srv, cc, false)
	if r.serverErr != nil || r.server.NegotiatedProtocol != "http/1.1" {
		t.Fatalf("ALPN: err %v proto %q", r.serverErr, r.server.NegotiatedProtocol)
	}
}

func TestExpiryMetrics(t *testing.T) {
	k := newPKI(t)
	m := newManager(t, Config{}, k.policy)
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "gatehouse_cert_expiry_timestamp_seconds" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			var kind, name string
			for _, lp := range mt.GetLabel() {
				switch lp.GetName() {
				case "kind":
					kind = lp.GetValue()
				case "name":
					name = lp.GetValue()
				}
			}
			got[kind+"/"+name] = mt.GetGauge().GetValue()
		}
	}
	want := map[string]float64{
		"server/web":           float64(k.server.Cert.NotAfter.Unix()),
		"tenant_ca/acme":       float64(k.acmeCA.Cert.NotAfter.Unix()),
		"crl_next_update/acme": float64(m.state.Load().tenants[0].crls[0].list.NextUpdate.Unix()),
		"tenant_ca/globex":     float64(k.globexCA.Cert.NotAfter.Unix()),
	}
	for key, v := range want {
		if got[key] != v {
			t.Errorf("%s = %v, want %v", key, got[key], v)
		}
	}
}

func TestDescribeTenant(t *testing.T) {
	any := DescribeTenant(policy.Tenant{ID: "acme", ClientCA: "/ca.pem"})
	if !strings.Contains(any, "ANY certificate") || !strings.Contains(any, "/ca.pem") {
		t.Errorf("empty identities: %q", any)
	}
	some := DescribeTenant(policy.Tenant{ID: "acme", ClientCA: "/ca.pem", CRL: "/ca.crl",
		Identities: policy.Identities{URISAN: []string{"spiffe://acme/*"}, CommonName: []string{"acme"}}})
	for _, w := range []string{"spiffe://acme/*", "CN acme", "/ca.crl"} {
		if !strings.Contains(some, w) {
			t.Errorf("%q lacks %q", some, w)
		}
	}
	if strings.Contains(some, "ANY") {
		t.Errorf("narrowed tenant described as any: %q", some)
	}
	inter := DescribeTenant(policy.Tenant{ID: "acme", ClientCA: "/root.pem", Intermediates: "/issuing.pem"})
	if !strings.Contains(inter, "issued by an intermediate in /issuing.pem under a root in /root.pem") {
		t.Errorf("tenant with intermediates: %q", inter)
	}
}

func TestApplyRejectsBadTLS(t *testing.T) {
	k := newPKI(t)
	m := newManager(t, Config{}, k.policy)
	bad := clonePolicy(k.policy)
	bad.TLS.CRLStale = "ignore"
	if err := m.Apply(bad); !errors.Is(err, ErrBadCRLStale) || !strings.Contains(err.Error(), "tls.crl_stale") {
		t.Fatalf("Apply crl_stale ignore = %v", err)
	}
	bad.TLS = policy.TLS{TicketRotation: -time.Hour}
	if err := m.Apply(bad); !errors.Is(err, ErrBadTicketRotation) {
		t.Fatalf("Apply negative rotation = %v", err)
	}
	if m.state.Load().policy != k.policy {
		t.Error("a refused policy replaced the one in force")
	}
}

func clonePolicy(p *policy.Policy) *policy.Policy {
	c := *p
	c.Tenants = append([]policy.Tenant(nil), p.Tenants...)
	c.Listeners = append([]policy.Listener(nil), p.Listeners...)
	return &c
}

func copyFile(t testing.TB, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	certstest.WriteFile(t, to, b)
}

// TestVerifiedCacheHonoursCAExpiry: a chain verified (and cached) while its
// CA was valid is refused once the CA expires, though the leaf is still valid.
func TestVerifiedCacheHonoursCAExpiry(t *testing.T) {
	k := newPKI(t)
	start := time.Now()
	ca := certstest.NewCAValid(t, "short CA", start.Add(-time.Hour), start.Add(time.Hour))
	leaf := ca.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "long"},
		NotAfter: start.Add(48 * time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	p := clonePolicy(k.policy)
	p.Tenants = []policy.Tenant{{ID: "short", ClientCA: ca.CertFile}}
	var now atomic.Int64
	now.Store(start.Unix())
	m := newManager(t, Config{Now: func() time.Time { return time.Unix(now.Load(), 0) }}, p)
	cs := tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf.Cert}}
	for i := 0; i < 2; i++ {
		if id, err := m.Identify(cs); err != nil || id.Tenant != "short" {
			t.Fatalf("Identify %d: %v %v", i, id, err)
		}
	}
	now.Add(2 * 3600)
	if _, err := m.Identify(cs); ResultOf(err) != ResultExpired {
		t.Fatalf("after the CA expired: %v, want expired", err)
	}
}

// TestSSLv3Refused sends a bare SSLv3 ClientHello (no supported_versions
// extension), as an old emulator would.
func TestSSLv3Refused(t *testing.T) {
	k := newPKI(t)
	m := newManager(t, Config{}, k.policy)
	srv, _ := m.TLSConfig("mainframe")
	hello := []byte{0x03, 0x00} // client_version SSL 3.0
	hello = append(hello, make([]byte, 32)...)
	hello = append(hello, 0x00)                   // session id
	hello = append(hello, 0x00, 0x02, 0x00, 0x2f) // TLS_RSA_WITH_AES_128_CBC_SHA
	hello = append(hello, 0x01, 0x00)             // null compression
	hs := append([]byte{0x01, 0x00, byte(len(hello) >> 8), byte(len(hello))}, hello...)
	record := append([]byte{0x16, 0x03, 0x00, byte(len(hs) >> 8), byte(len(hs))}, hs...)

	c1, c2 := net.Pipe()
	go func() {
		c2.Write(record)
		io.Copy(io.Discard, c2)
	}()
	sc := tls.Server(c1, srv)
	err := sc.Handshake()
	c1.Close()
	c2.Close()
	if err == nil {
		t.Fatal("SSLv3 handshake succeeded")
	}
	before := counter(t, m, "mainframe", "none", ResultProtocolVersion)
	m.HandshakeFailed("mainframe", testSource, sc.ConnectionState(), err)
	if ResultOf(err) != ResultProtocolVersion || counter(t, m, "mainframe", "none", ResultProtocolVersion) != before+1 {
		t.Fatalf("SSLv3: %v classified %s", err, ResultOf(err))
	}
}

// TestWatchServerCert: touch reloads nothing, a new certificate is picked
// up, a broken key is refused once (not every poll) and the old pair keeps
// serving, and fixing the file recovers.
func TestWatchServerCert(t *testing.T) {
	k := newPKI(t)
	var logs testkit.LogBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	m := newManager(t, Config{PollInterval: 10 * time.Millisecond, Logger: logger}, k.policy)
	srv, _ := m.TLSConfig("web")
	changed := make(chan struct{}, 8)
	m.OnChange(func() { changed <- struct{}{} })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- m.Watch(ctx) }()
	defer func() { cancel(); <-done }()
	quiet := func(what string) {
		t.Helper()
		time.Sleep(150 * time.Millisecond)
		select {
		case <-changed:
			t.Fatalf("OnChange fired after %s", what)
		default:
		}
	}
	waitChange := func(what string) {
		t.Helper()
		select {
		case <-changed:
		case <-time.After(10 * time.Second):
			t.Fatalf("no reload after %s", what)
		}
	}
	serial := func() string {
		t.Helper()
		r := handshake(t, srv, k.clientConfig(k.acme), false)
		if r.serverErr != nil {
			t.Fatal(r.serverErr)
		}
		return r.client.PeerCertificates[0].SerialNumber.String()
	}

	future := time.Now().Add(time.Hour)
	if err := os.Chtimes(k.server.CertFile, future, future); err != nil {
		t.Fatal(err)
	}
	quiet("touch")

	next := k.serverCA.Server(t, "gw.example")
	keyBefore, _ := os.ReadFile(k.server.KeyFile)
	copyFile(t, next.CertFile, k.server.CertFile)
	copyFile(t, next.KeyFile, k.server.KeyFile)
	waitChange("a new certificate and key")
	if got := serial(); got != next.Cert.SerialNumber.String() {
		t.Fatalf("serving serial %s, want the new %s", got, next.Cert.SerialNumber)
	}

	certstest.WriteFile(t, k.server.KeyFile, keyBefore) // the old key: does not fit the new certificate
	refusals := func() int { return strings.Count(logs.String(), "tls state not loaded") }
	for deadline := time.Now().Add(10 * time.Second); refusals() == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a key that does not fit was never refused")
		}
	}
	quiet("a key that does not fit")
	if got := serial(); got != next.Cert.SerialNumber.String() {
		t.Fatalf("after a bad key serving %s, want the previous pair", got)
	}
	if n := refusals(); n != 1 {
		t.Errorf("bad key logged %d times over several polls, want once", n)
	}
	copyFile(t, next.KeyFile, k.server.KeyFile)
	// Same content as loaded: nothing to reload, but the same bad change
	// made again must be reported again.
	quiet("restoring the loaded key")
	certstest.WriteFile(t, k.server.KeyFile, keyBefore)
	for deadline := time.Now().Add(10 * time.Second); refusals() < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the bad key, written again, was not reported again")
		}
	}
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCRLKeyRollover: a tenant trusts the old and the new key of its CA,
// both named alike. A CRL counts only for the certificates of the key that
// signed it: with the old key's CRL alone, a leaf of the new key has no
// CRL from its issuer; with both CRLs, the new key's revocation holds.
func TestCRLKeyRollover(t *testing.T) {
	k := newPKI(t)
	oldCA := certstest.NewCA(t, "corp rollover")
	newCA := certstest.NewCA(t, "corp rollover")
	leaf := newCA.Client(t, "svc", "spiffe://corp/svc")
	dir := t.TempDir()
	bundle := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(bundle, append(readFile(t, oldCA.CertFile), readFile(t, newCA.CertFile)...), 0o644); err != nil {
		t.Fatal(err)
	}
	crl := oldCA.CRL(t, filepath.Join(dir, "ca.crl"), time.Now().Add(time.Hour))
	p := clonePolicy(k.policy)
	p.Tenants = []policy.Tenant{{ID: "corp", ClientCA: bundle, CRL: crl}}
	m := newManager(t, Config{}, p)
	srv, _ := m.TLSConfig("web")
	try := func() Result {
		r := handshake(t, srv, k.clientConfig(leaf), false)
		if r.serverErr != nil {
			return ResultOf(r.serverErr)
		}
		return ResultOK
	}
	if res := try(); res != ResultNoCRL {
		t.Errorf("leaf of the new key with only the old key's CRL: %s, want no_crl", res)
	}
	both := func(revoked ...*certstest.Leaf) {
		t.Helper()
		o := readFile(t, oldCA.CRL(t, filepath.Join(dir, "old.crl"), time.Now().Add(time.Hour)))
		n := readFile(t, newCA.CRL(t, filepath.Join(dir, "new.crl"), time.Now().Add(time.Hour), revoked...))
		if err := os.WriteFile(crl, append(o, n...), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := m.Reload(); err != nil {
			t.Fatalf("both keys' CRLs: %v", err)
		}
	}
	both()
	if res := try(); res != ResultOK {
		t.Errorf("leaf of the new key with both CRLs: %s, want ok", res)
	}
	both(leaf)
	if res := try(); res != ResultRevoked {
		t.Errorf("leaf revoked by the new key: %s, want revoked", res)
	}
}
