package proxy_test

import (
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/proxy"
)

// permissiveSource hands out a config that does not demand client
// certificates; Apply must refuse it.
type permissiveSource struct{ *testSource }

func (p permissiveSource) TLSConfig(string) (*tls.Config, error) {
	return &tls.Config{Certificates: []tls.Certificate{p.server}}, nil
}

// pickySource selects per SNI, and for one name returns nil (the outer,
// permissive config would apply).
type pickySource struct{ *testSource }

func (p pickySource) TLSConfig(l string) (*tls.Config, error) {
	inner, _ := p.testSource.TLSConfig(l)
	return &tls.Config{
		Certificates: []tls.Certificate{p.server},
		GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
			if chi.ServerName == "a.example" {
				return nil, nil
			}
			return inner, nil
		},
	}, nil
}

func TestTLSConfigMustRequireClientCertificates(t *testing.T) {
	p := newPKI(t)
	b := newBackend(t, "a")
	pol := &policy.Policy{Listeners: []policy.Listener{listener("web", policy.ProtoHTTPS, policy.Route{Tenant: "acme", Backend: b.url()})}}
	srv, err := proxy.New(proxy.Config{TLS: permissiveSource{p.src}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if err := srv.Apply(pol); !errors.Is(err, proxy.ErrTLSConfig) {
		t.Errorf("permissive TLS config: %v, want ErrTLSConfig", err)
	}

	srv2, err := proxy.New(proxy.Config{TLS: pickySource{p.src}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv2.Close()
	if err := srv2.Apply(pol); err != nil {
		t.Fatal(err)
	}
	a, _ := srv2.Addr("web")
	if c, err := tls.Dial("tcp", a.String(), p.clientTLS(tlsZero, "a.example")); err == nil {
		// TLS 1.3 clients learn of a failure on their first read.
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
		if n, _ := c.Read(make([]byte, 1)); n > 0 {
			t.Error("falling back to a config without client certificates answered")
		}
		c.Close()
	}
	if b.hits.Load() != 0 {
		t.Error("backend reached without a client certificate")
	}
	acme := &http.Client{Transport: &http.Transport{TLSClientConfig: p.clientTLS(p.acme, "localhost")}}
	resp, err := acme.Get("https://" + a.String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("per-SNI config with a certificate: status %d", resp.StatusCode)
	}
}

// TestPeerOfAnotherListenerRefused: a Peer the TLS source made for another
// listener than the connection's is refused, never served on either.
func TestPeerOfAnotherListenerRefused(t *testing.T) {
	echo := lineEcho(t)
	other := listener("other", policy.ProtoTCP, policy.Route{Tenant: "acme", Backend: echo})
	other.Port = freePort(t)
	h := newHarness(t, testLimits(), listener("raw", policy.ProtoTCP, policy.Route{Tenant: "acme", Backend: echo}), other)
	if s, err := h.dialSession(h.pki.acme, "raw"); err != nil {
		t.Fatalf("before: %v", err)
	} else {
		s.c.Close()
	}
	h.pki.src.mu.Lock()
	h.pki.src.elsewhere = "other"
	h.pki.src.mu.Unlock()
	if _, err := h.dialSession(h.pki.acme, "raw"); err == nil {
		t.Fatal("a Peer of listener other served on raw")
	}
	if !strings.Contains(h.logs.String(), `peer of listener \"other\"`) {
		t.Errorf("no refusal naming the other listener:\n%s", h.logs.String())
	}
}
