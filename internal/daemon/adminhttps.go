package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/gatehouse-dmz/gatehouse/internal/admin"
	"github.com/gatehouse-dmz/gatehouse/internal/config"
)

// openAudit opens the audit log before the admin API serves: without it
// the API does not start (no unaudited admin requests).
func (d *Daemon) openAudit(cfg *config.Config) error {
	path := cfg.Access.AuditLog
	if path == "" {
		path = filepath.Join(cfg.StateDir, "audit.log")
	}
	// A fresh state_dir (or the audit log's own directory) is created
	// here, as the rest of the state is: nothing else may need it first.
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	a, err := admin.OpenAudit(path)
	if err != nil {
		return err
	}
	if old := d.audit.Swap(a); old != nil {
		old.Close()
	}
	return nil
}

// closeAudit closes the audit log when Run ends; after a teardown,
// finishTeardown does, once it has written the outcome.
func (d *Daemon) closeAudit() {
	if d.tearingDown() {
		return
	}
	if a := d.audit.Swap(nil); a != nil {
		a.Close()
	}
}

// listenAdminHTTPS binds the HTTPS admin endpoint (nil when it is off):
// TLS 1.2 at least, a client certificate from one of the admin CAs always
// required and verified in the handshake; the grants it has are looked up
// per request, so a reload's grants apply to connections already open.
func (d *Daemon) listenAdminHTTPS(h config.AccessHTTPS) (net.Listener, error) {
	if h.Listen == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(h.ServerCert, h.ServerKey)
	if err != nil {
		return nil, fmt.Errorf("admin endpoint: %w", err)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			cas := d.access.Load().ClientCAs()
			if cas == nil {
				return nil, errors.New("no admin certificate is granted anything")
			}
			return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"},
				ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: cas, SessionTicketsDisabled: true,
				VerifyConnection: d.verifyAdminConnection}, nil
		}}
	ln, err := net.Listen("tcp", h.Listen)
	if err != nil {
		return nil, fmt.Errorf("admin endpoint: %w", err)
	}
	return tls.NewListener(ln, tc), nil
}

// verifyAdminConnection refuses, in every handshake (resumed ones too),
// a certificate the admin CRLs in force revoke, or whose CRL is stale or
// missing; the refusal is logged and audited. Requests on connections
// already open are judged again by the principal (admin.Rules.Cert).
func (d *Daemon) verifyAdminConnection(cs tls.ConnectionState) error {
	p := d.access.Load().Cert(cs.PeerCertificates)
	if p.Revoked == nil {
		return nil
	}
	e := admin.NewEntry(p, admin.ActHandshake, "", nil)
	e.Result, e.Reason = "refused", p.Revoked.Error()
	d.record(e)
	d.log.Warn("admin certificate refused", "principal", p.Name(), "transport", p.Transport, "reason", p.Revoked)
	return p.Revoked
}

// watchAdminCRLs re-reads the admin CRL files every second and, when one
// changed, compiles the access section in force again with it: a
// certificate revoked there is refused from its next handshake or
// request on. A change that does not load is logged once; the rules in
// force stay.
func (d *Daemon) watchAdminCRLs(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	failed := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !d.access.Load().CRLsChanged() {
			failed = false
			continue
		}
		d.mu.Lock()
		r, err := admin.CompileConfig(d.cfg.Load(), uint32(os.Geteuid()))
		if err == nil {
			d.access.Store(r)
		}
		d.mu.Unlock()
		switch {
		case err == nil:
			failed = false
			d.log.Info("admin CRLs re-read after a file change")
		case !failed:
			failed = true
			d.log.Error("admin CRL change not loaded; the CRLs in force stay", "err", err)
		}
	}
}

// serveAdminHTTPS serves the admin API on ln until ctx ends.
func (d *Daemon) serveAdminHTTPS(ctx context.Context, ln net.Listener) error {
	go d.watchAdminCRLs(ctx)
	// Refused handshakes (no, forged or expired certificates) are logged
	// by net/http through this.
	srv := &http.Server{Handler: d.httpsHandler(d.adminMux()), ReadHeaderTimeout: 5 * time.Second,
		ErrorLog: slog.NewLogLogger(d.log.With("endpoint", "admin").Handler(), slog.LevelInfo)}
	go func() {
		<-ctx.Done()
		d.stopAdminServer(srv)
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("admin endpoint: %w", err)
	}
	return nil
}

// CheckAccess is what run refuses of the access section beyond the
// configuration's validation: an admin CA file without a certificate, an
// endpoint certificate and key that do not load. gatehouse check calls it
// too.
func CheckAccess(cfg *config.Config) error {
	if _, err := admin.CompileConfig(cfg, uint32(os.Geteuid())); err != nil {
		return err
	}
	if h := cfg.Access.HTTPS; h.Listen != "" {
		if _, err := tls.LoadX509KeyPair(h.ServerCert, h.ServerKey); err != nil {
			return fmt.Errorf("access.https: %w", err)
		}
	}
	return nil
}
