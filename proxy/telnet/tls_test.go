package telnet

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/internal/testkit"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
	"github.com/gatehouse-dmz/gatehouse/policy"
)

type testPKI struct {
	ca        *certstest.CA
	server    *certstest.Leaf
	client    *certstest.Leaf
	serverTLS *tls.Config
}

func newPKI(t testing.TB) *testPKI {
	ca := certstest.NewCA(t, "acme tenants")
	p := &testPKI{ca: ca, server: ca.Server(t, "localhost"), client: ca.Client(t, "acme-cloud", "spiffe://acme/cloud")}
	p.serverTLS = &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{p.server.TLS},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca.Pool(),
	}
	return p
}

func (p *testPKI) clientTLS() *tls.Config {
	return &tls.Config{RootCAs: p.ca.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{p.client.TLS}}
}

func admitAcme(cs tls.ConnectionState) (certs.Peer, error) {
	if len(cs.PeerCertificates) == 0 || cs.PeerCertificates[0].Subject.CommonName != "acme-cloud" {
		return certs.Peer{}, errors.New("not acme")
	}
	sum := sha256.Sum256(cs.PeerCertificates[0].Raw)
	return certs.Peer{Tenant: "acme", FingerprintSHA256: hex.EncodeToString(sum[:])}, nil
}

func TestStartTLS(t *testing.T) {
	pki := newPKI(t)
	route := policy.Route{LUNames: []string{"ACMELU0*"}}
	doStartTLS := mustTokens(t, `IAC DO START-TLS`)
	follows := mustTokens(t, `IAC SB START-TLS FOLLOWS IAC SE`)

	t.Run("accepted", func(t *testing.T) {
		rg := newRig(t, policy.ProtoTN3270, route, Limits{})
		cli, srv := testkit.TCPPair(t)
		ch := make(chan error, 1)
		go func() { ch <- rg.h.ServeStartTLS(context.Background(), srv, pki.serverTLS, admitAcme) }()
		expectRead(t, cli, doStartTLS)
		// x3270 style: WILL and FOLLOWS at once, before the server's FOLLOWS.
		cli.Write(append(mustTokens(t, `IAC WILL START-TLS`), follows...))
		expectRead(t, cli, follows)
		tc := tls.Client(cli, pki.clientTLS())
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		negotiate(t, tc, rg.acceptHost(t))
		tc.Close()
		if err := waitErr(t, ch); err != nil {
			t.Fatal(err)
		}
	})
	refused := func(t *testing.T, client func(t *testing.T, cli net.Conn)) error {
		rg := newRig(t, policy.ProtoTN3270, route, Limits{HandshakeTimeout: 2 * time.Second})
		cli, srv := testkit.TCPPair(t)
		ch := make(chan error, 1)
		go func() { ch <- rg.h.ServeStartTLS(context.Background(), srv, pki.serverTLS, admitAcme) }()
		expectRead(t, cli, doStartTLS)
		client(t, cli)
		err := waitErr(t, ch)
		if err == nil {
			t.Fatal("session served")
		}
		// No byte reached a host: the proxy never even connected.
		rg.hostLn.(*net.TCPListener).SetDeadline(time.Now().Add(50 * time.Millisecond))
		if c, err := rg.hostLn.Accept(); err == nil {
			c.Close()
			t.Fatal("the proxy connected to the host")
		}
		return err
	}
	t.Run("client refuses", func(t *testing.T) {
		refused(t, func(t *testing.T, cli net.Conn) { cli.Write(mustTokens(t, `IAC WONT START-TLS`)) })
	})
	t.Run("client talks telnet instead", func(t *testing.T) {
		refused(t, func(t *testing.T, cli net.Conn) {
			cli.Write(mustTokens(t, `IAC WILL TTYPE IAC SB TTYPE IS "IBM-3278-2-E@ACMELU01" IAC SE`))
		})
	})
	t.Run("no client certificate", func(t *testing.T) {
		refused(t, func(t *testing.T, cli net.Conn) {
			cli.Write(append(mustTokens(t, `IAC WILL START-TLS`), follows...))
			expectRead(t, cli, follows)
			cfg := pki.clientTLS()
			cfg.Certificates = nil
			tc := tls.Client(cli, cfg)
			tc.Handshake()
			tc.Read(make([]byte, 1))
		})
	})
	t.Run("foreign tenant", func(t *testing.T) {
		// A certificate the handshake takes (same CA) that admit refuses.
		other := pki.ca.Client(t, "intruder")
		err := refused(t, func(t *testing.T, cli net.Conn) {
			cli.Write(append(mustTokens(t, `IAC WILL START-TLS`), follows...))
			expectRead(t, cli, follows)
			cfg := pki.clientTLS()
			cfg.Certificates = []tls.Certificate{other.TLS}
			tc := tls.Client(cli, cfg)
			tc.Handshake()
			tc.Read(make([]byte, 1))
		})
		if !errors.Is(err, ErrNotAdmitted) || !strings.Contains(err.Error(), "not acme") {
			t.Errorf("refusal %v, want ErrNotAdmitted with admit's reason", err)
		}
	})
}

// TestBackendTLS carries a session to a host that speaks TLS, verified
// against the route's backend CA.
func TestBackendTLS(t *testing.T) {
	pki := newPKI(t)
	hostLn, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pki.ca.Server(t, "127.0.0.1").TLS}})
	if err != nil {
		t.Fatal(err)
	}
	defer hostLn.Close()
	rg := newRig(t, policy.ProtoTN3270, policy.Route{Backend: hostLn.Addr().String(), BackendTLS: true,
		BackendCA: pki.ca.CertFile, LUNames: []string{"ACMELU0*"}}, Limits{})
	rg.hostLn = hostLn
	cli, srv := testkit.TCPPair(t)
	ch := rg.serve(t, context.Background(), srv, testPeer())
	host, err := hostLn.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	negotiate(t, cli, host)
	cli.Close()
	if err := waitErr(t, ch); err != nil {
		t.Fatal(err)
	}

	// A host whose certificate the backend CA did not issue is refused.
	rg2 := newRig(t, policy.ProtoTN3270, policy.Route{Backend: hostLn.Addr().String(), BackendTLS: true,
		BackendCA: certstest.NewCA(t, "elsewhere").CertFile}, Limits{})
	go func() {
		if c, err := hostLn.Accept(); err == nil {
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	_, srv2 := testkit.TCPPair(t)
	if err := rg2.h.Serve(context.Background(), srv2, testPeer()); err == nil {
		t.Fatal("untrusted host accepted")
	}
}
