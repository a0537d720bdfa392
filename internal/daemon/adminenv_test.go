package daemon

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
)

// echoBackend is a TCP backend that answers each line with name and the
// line.
func echoBackend(t *testing.T, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					l, err := r.ReadString('\n')
					if err != nil {
						return
					}
					io.WriteString(c, name+" "+l)
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// envSession is a live TLS session through the daemon with a client
// certificate of one environment.
type envSession struct {
	c *tls.Conn
	r *bufio.Reader
}

func dialEnv(t *testing.T, addr string, serverCA *certstest.CA, cert *certstest.Leaf) *envSession {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: serverCA.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{cert.TLS}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s := &envSession{c: c, r: bufio.NewReader(c)}
	if got, err := s.echo(); err != nil {
		t.Fatalf("session of %s: %q %v", cert.TLS.Leaf.Subject, got, err)
	}
	return s
}

// echo sends a line and reads the answer: an error once the session is
// cut.
func (s *envSession) echo() (string, error) {
	s.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(s.c, "ping\n"); err != nil {
		return "", err
	}
	return s.r.ReadString('\n')
}

// TestEnvironmentScopedAdmin walks every endpoint of the admin API with a
// principal scoped to one environment (tenant:acme/dev, admin) against a
// daemon with real components and live TLS sessions of both environments:
// status, metrics and the access log show dev's sessions, routes, series
// and lines and nothing of prod; sessions kill cuts dev's sessions only,
// and is refused for prod and for the whole tenant, which live on. A
// refusal of the tenant's, which names no environment, is not shown.
func TestEnvironmentScopedAdmin(t *testing.T) {
	ca := certstest.NewCA(t, "acme")
	prodCert, devCert := ca.Client(t, "acme prod"), ca.Client(t, "acme dev")
	serverCA := certstest.NewCA(t, "gateway")
	srv := serverCA.Server(t, "localhost", "127.0.0.1")
	adminCA := certstest.NewCA(t, "admin ca")
	devAdmin := adminCA.Client(t, "acme-dev-admin")
	prodBackend, devBackend := echoBackend(t, "prod"), echoBackend(t, "dev")
	dir := t.TempDir()
	raw, adminAddr := freePort(t), freePort(t)
	cfg := fmt.Sprintf(`
enforcement: {xdp: "off", nftables: false}
state_dir: %[1]s
admin_socket: ""
metrics: {listen: "%[2]s"}
shutdown_grace: 1s
tenants:
  - id: acme
    client_ca: %[3]s
    environments:
      - {name: prod, identities: {cn: ["acme prod"]}}
      - {name: dev, identities: {cn: ["acme dev"]}}
listeners:
  - {name: raw, listen: "%[4]s", protocol: tcp, server_cert: %[5]s, server_key: %[6]s,
     routes: [{tenant: acme, environment: prod, backend: "%[7]s"}, {tenant: acme, environment: dev, backend: "%[8]s"}]}
access:
  https: {listen: "%[9]s", server_cert: %[5]s, server_key: %[6]s}
  grants:
    - role: admin
      scope: "tenant:acme/dev"
      certificates: [{client_ca: %[10]s, crl: none, identities: {cn: [acme-dev-admin]}}]
`, dir, freePort(t), ca.CertFile, raw, srv.CertFile, srv.KeyFile, prodBackend, devBackend, adminAddr, adminCA.CertFile)
	path := filepath.Join(dir, "gatehouse.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := New(Options{ConfigPath: path, Logger: quietLogger(), AccessLog: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	waitFor(t, "the listener and the admin endpoint", func() bool {
		for _, a := range []string{raw, adminAddr} {
			c, err := net.Dial("tcp", a)
			if err != nil {
				return false
			}
			c.Close()
		}
		return true
	})

	// One session of each environment ends (an access log line each);
	// two of prod and one of dev stay open.
	for _, cert := range []*certstest.Leaf{prodCert, devCert} {
		s := dialEnv(t, raw, serverCA, cert)
		s.c.Close()
	}
	prod1, prod2 := dialEnv(t, raw, serverCA, prodCert), dialEnv(t, raw, serverCA, prodCert)
	dev := dialEnv(t, raw, serverCA, devCert)
	// A certificate of acme that proves no environment is refused: the
	// refusal names the tenant, not an environment, so only a grant of
	// the whole tenant sees it.
	if c, err := tls.Dial("tcp", raw, &tls.Config{RootCAs: serverCA.Pool(), ServerName: "localhost",
		Certificates: []tls.Certificate{ca.Client(t, "acme qa").TLS}}); err == nil {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("a certificate of no environment got a session")
		}
		c.Close()
	}
	waitFor(t, "the refusal in status", func() bool {
		for _, r := range d.Status().Refusals {
			if r.Tenant == "acme" && strings.Contains(r.Subject, "acme qa") {
				return true
			}
		}
		return false
	})
	waitFor(t, "both ended sessions in the access log", func() bool {
		n := len(d.ring.Tail(10, func(string, string) bool { return true }))
		return n >= 2
	})

	lab := &adminLab{url: "https://" + adminAddr, serverCA: serverCA}
	client := lab.client(devAdmin)
	for _, tc := range []struct {
		method, path string
		code         int
		has          []string
	}{
		{"GET", "/status", 200, []string{`"environments": [
        {
          "name": "dev",
          "sessions": 1
        }
      ]`, `"sessions": 1`, `"environment": "dev"`, devBackend}},
		{"GET", "/metrics", 200, []string{`environment="dev"`}},
		{"GET", "/access-log", 200, []string{`"environment":"dev"`}},
		{"GET", "/certificates", 200, nil},
		{"GET", "/ready", 200, []string{"ready"}},
		{"POST", "/feeds/refresh", 403, []string{"needs role publisher at global scope"}},
		{"POST", "/feeds/accept?feed=x", 403, []string{"needs role publisher at global scope"}},
		{"POST", "/reload", 403, []string{"needs role admin at global scope"}},
		{"POST", "/teardown?confirm=yes", 403, []string{"refused: teardown on global needs role admin at global scope"}},
		{"POST", "/sessions/kill?scope=tenant:acme/prod", 403, []string{"needs role admin at a scope covering tenant:acme/prod", "has admin at tenant:acme/dev"}},
		{"POST", "/sessions/kill?scope=tenant:acme", 403, []string{"needs role admin at a scope covering tenant:acme;"}},
		{"POST", "/sessions/drain?scope=tenant:acme/prod", 403, []string{"needs role publisher at a scope covering tenant:acme/prod"}},
		{"POST", "/sessions/drain?scope=tenant:acme", 403, []string{"needs role publisher at a scope covering tenant:acme;"}},
	} {
		code, body, err := lab.do(t, client, tc.method, tc.path)
		if err != nil || code != tc.code {
			t.Errorf("%s %s: %d %v, want %d:\n%s", tc.method, tc.path, code, err, tc.code, body)
			continue
		}
		for _, h := range tc.has {
			if !strings.Contains(body, h) {
				t.Errorf("%s %s: no %q in:\n%s", tc.method, tc.path, h, body)
			}
		}
		// Nothing of prod: its name, its backend, its series or lines.
		if strings.Contains(tc.path, "prod") {
			continue
		}
		for _, leak := range []string{`"prod"`, `environment="prod"`, prodBackend, "acme prod", "acme qa"} {
			if strings.Contains(body, leak) {
				t.Errorf("%s %s shows prod (%s):\n%s", tc.method, tc.path, leak, body)
			}
		}
	}
	for _, s := range []*envSession{prod1, prod2, dev} {
		if got, err := s.echo(); err != nil {
			t.Fatalf("a session cut by a refused or read request: %q %v", got, err)
		}
	}

	code, body, err := lab.do(t, client, "POST", "/sessions/kill?scope=tenant:acme/dev")
	if err != nil || code != 200 || !strings.Contains(body, `"sessions": 1`) {
		t.Fatalf("kill tenant:acme/dev: %d %v\n%s", code, err, body)
	}
	if got, err := dev.echo(); err == nil {
		t.Errorf("dev's session lives on after its kill: %q", got)
	}
	for _, s := range []*envSession{prod1, prod2} {
		if got, err := s.echo(); err != nil || got != "prod ping\n" {
			t.Errorf("prod's session after dev's kill: %q %v", got, err)
		}
	}
}
