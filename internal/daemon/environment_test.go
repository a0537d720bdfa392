package daemon

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
	"github.com/gatehouse-dmz/gatehouse/internal/testkit"
)

// TestStatusShowsEnvironments: with the real components, status counts
// the live sessions of each environment of a tenant, and lists each
// route with the environment it serves.
func TestStatusShowsEnvironments(t *testing.T) {
	ca := certstest.NewCA(t, "acme")
	prod := ca.Client(t, "acme prod")
	serverCA := certstest.NewCA(t, "gateway")
	srv := serverCA.Server(t, "localhost", "127.0.0.1")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	dir := t.TempDir()
	var d *Daemon
	var raw string
	for attempt := 1; ; attempt++ {
		raw = freePort(t)
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
      - {name: production, identities: {cn: ["acme prod"]}}
      - {name: development, identities: {cn: ["acme dev"]}}
listeners:
  - {name: raw, listen: "%[4]s", protocol: tcp, server_cert: %[5]s, server_key: %[6]s,
     routes: [{tenant: acme, environment: production, backend: "%[7]s"}, {tenant: acme, environment: development, backend: "%[7]s"}]}
`, dir, freePort(t), ca.CertFile, raw, srv.CertFile, srv.KeyFile, ln.Addr())
		path := filepath.Join(dir, "gatehouse.yaml")
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		d, err = New(Options{ConfigPath: path, Logger: slog.New(slog.NewTextHandler(&testkit.LogBuffer{}, nil))})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- d.Run(ctx) }()
		var runErr error
		waitFor(t, "the daemon to serve or fail", func() bool {
			select {
			case runErr = <-done:
				return true
			default:
			}
			c, err := net.Dial("tcp", raw)
			if err == nil {
				c.Close()
			}
			return err == nil && d.Policy() != nil
		})
		if runErr == nil {
			t.Cleanup(func() { cancel(); <-done })
			break
		}
		cancel()
		if attempt == 3 || !errors.Is(runErr, syscall.EADDRINUSE) {
			t.Fatalf("daemon did not start: %v", runErr)
		}
	}
	c, err := tls.Dial("tcp", raw, &tls.Config{RootCAs: serverCA.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{prod.TLS}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "hi\n"); err != nil {
		t.Fatal(err)
	}
	if l, err := bufio.NewReader(c).ReadString('\n'); l != "hi\n" {
		t.Fatalf("session: %q %v", l, err)
	}
	st := d.Status()
	if len(st.Tenants) != 1 || st.Tenants[0].Sessions != 1 || len(st.Tenants[0].Environments) != 2 ||
		st.Tenants[0].Environments[0] != (EnvironmentStatus{Name: "production", Sessions: 1}) ||
		st.Tenants[0].Environments[1] != (EnvironmentStatus{Name: "development", Sessions: 0}) {
		t.Fatalf("tenants in status: %+v", st.Tenants)
	}
	if len(st.Listeners) != 2 || st.Listeners[0].Environment != "production" || st.Listeners[1].Environment != "development" {
		t.Fatalf("routes in status: %+v", st.Listeners)
	}
}
