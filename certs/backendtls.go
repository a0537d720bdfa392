package certs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// BackendTLS builds the client side of the TLS route r speaks to its
// backend, the same for every proxy: TLS 1.2 at least, r.BackendCA instead
// of the system roots when set, and the client certificate when set.
// serverName is the name the backend's certificate must carry ("" when the
// caller sets it per backend). It reads the files each time it is called:
// the policy names them, certs loads them.
func BackendTLS(r policy.Route, serverName string) (*tls.Config, error) {
	if (r.BackendCert == "") != (r.BackendKey == "") {
		return nil, errors.New("backend_cert and backend_key go together")
	}
	files := defaultFiles()
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	if r.BackendCA != "" {
		pem, err := files.ReadFile(r.BackendCA)
		if err != nil {
			return nil, fmt.Errorf("backend ca: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("backend ca %s holds no PEM certificate", r.BackendCA)
		}
	}
	if r.BackendCert != "" {
		certPEM, err := files.ReadFile(r.BackendCert)
		var keyPEM []byte
		if err == nil {
			keyPEM, err = files.ReadFile(r.BackendKey)
		}
		var kp tls.Certificate
		if err == nil {
			kp, err = tls.X509KeyPair(certPEM, keyPEM)
		}
		if err != nil {
			return nil, fmt.Errorf("backend client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{kp}
	}
	return tc, nil
}

// StreamBackendTLS is the TLS a tcp or telnet route speaks to its
// host:port backend: nil for plain TCP (whose route must then carry no TLS
// settings), else BackendTLS for the backend's host.
func StreamBackendTLS(r policy.Route) (*tls.Config, error) {
	host, _, err := net.SplitHostPort(r.Backend)
	if err != nil {
		return nil, fmt.Errorf("backend %q: %w", r.Backend, err)
	}
	if !r.BackendTLS {
		return nil, r.CheckPlainBackend()
	}
	return BackendTLS(r, host)
}

// CheckBackendTLS builds the backend TLS of every route of p as the
// proxies will when they apply it, so that `gatehouse check` refuses a
// backend CA without a certificate, or a client key that does not match
// its certificate, before run does. Nothing is kept.
func CheckBackendTLS(p *policy.Policy) error {
	var errs []error
	for _, l := range p.Listeners {
		for i, r := range l.Routes {
			var err error
			switch {
			case l.Protocol == policy.ProtoHTTPS || l.Protocol == policy.ProtoSOAP:
				if r.HTTPSBackend() {
					_, err = BackendTLS(r, "")
				}
			default:
				_, err = StreamBackendTLS(r)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("listener %q route %d: %w", l.Name, i, err))
			}
		}
	}
	return errors.Join(errs...)
}
