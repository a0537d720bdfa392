package daemon

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/internal/config"
	"github.com/gatehouse-dmz/gatehouse/tunnel"
)

// GatewayTrust loads gateway.connectors and the tunnel port's certificate
// into a certificate manager of their own, apart from the tenants': a
// tenant's client certificate cannot open a tunnel, nor a connector's
// call a listener. Run and check both call it.
func GatewayTrust(cfg *config.Config, logger *slog.Logger) (*certs.Manager, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m, err := certs.New(certs.Config{Logger: logger.With("trust", "connectors")})
	if err != nil {
		return nil, err
	}
	p := cfg.ConnectorTrust()
	p.StateDir = "" // no session tickets, nothing to keep
	if err := m.Apply(p); err != nil {
		m.Close()
		return nil, fmt.Errorf("gateway.connectors: %w", err)
	}
	return m, nil
}

// ConnectorTLS loads what a connector pins and presents: the gateway CA,
// its only root, and its own certificate and key; and the proxy's
// password. Run and check both call it.
func ConnectorTLS(cfg *config.Config) (*tls.Config, *tunnel.HTTPProxy, error) {
	k := cfg.Connector
	var errs []error
	pool := x509.NewCertPool()
	if pem, err := os.ReadFile(k.GatewayCA); err != nil {
		errs = append(errs, fmt.Errorf("connector.gateway_ca: %w", err))
	} else if !pool.AppendCertsFromPEM(pem) {
		errs = append(errs, fmt.Errorf("connector.gateway_ca: %s holds no PEM certificate", k.GatewayCA))
	}
	pair, err := tls.LoadX509KeyPair(k.Cert, k.Key)
	if err != nil {
		errs = append(errs, fmt.Errorf("connector.cert and connector.key: %w", err))
	}
	var px *tunnel.HTTPProxy
	if k.Proxy.Address != "" {
		px = &tunnel.HTTPProxy{Address: k.Proxy.Address, Username: k.Proxy.Username}
		if f := k.Proxy.PasswordFile; f != "" {
			b, err := os.ReadFile(f)
			if err != nil {
				errs = append(errs, fmt.Errorf("connector.proxy.password_file: %w", err))
			}
			px.Password = strings.TrimRight(string(b), "\r\n")
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, nil, err
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS13}, px, nil
}

// CheckRole loads what the role needs beyond the listeners' files, as run
// does, so that check refuses what run would; the workers' user too.
func CheckRole(cfg *config.Config) error {
	if privsepOn(cfg) {
		if _, _, err := WorkerUser(cfg); err != nil {
			return err
		}
	}
	switch cfg.Role() {
	case config.RoleGateway:
		m, err := GatewayTrust(cfg, nil)
		if err != nil {
			return err
		}
		return m.Close()
	case config.RoleConnector:
		_, _, err := ConnectorTLS(cfg)
		return err
	}
	return nil
}
