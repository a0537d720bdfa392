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
	a, err := admin.OpenAudit(path)
	if err != nil {
		return err
	}
	if old := d.audit.Swap(a); old != nil {
		old.Close()
	}
	return nil
}

func (d *Daemon) closeAudit() {
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
				ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: cas, SessionTicketsDisabled: true}, nil
		}}
	ln, err := net.Listen("tcp", h.Listen)
	if err != nil {
		return nil, fmt.Errorf("admin endpoint: %w", err)
	}
	return tls.NewListener(ln, tc), nil
}

// serveAdminHTTPS serves the admin API on ln until ctx ends.
func (d *Daemon) serveAdminHTTPS(ctx context.Context, ln net.Listener) error {
	// Refused handshakes (no, forged or expired certificates) are logged
	// by net/http through this.
	srv := &http.Server{Handler: d.adminMux(), ReadHeaderTimeout: 5 * time.Second,
		ErrorLog: slog.NewLogLogger(d.log.With("endpoint", "admin").Handler(), slog.LevelInfo)}
	go func() {
		<-ctx.Done()
		srv.Close()
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
	if _, err := admin.Compile(cfg.Access, uint32(os.Geteuid())); err != nil {
		return err
	}
	if h := cfg.Access.HTTPS; h.Listen != "" {
		if _, err := tls.LoadX509KeyPair(h.ServerCert, h.ServerKey); err != nil {
			return fmt.Errorf("access.https: %w", err)
		}
	}
	return nil
}
