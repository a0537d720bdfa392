package policy

import "errors"

// CheckPlainBackend refuses TLS settings on a route that speaks plain to
// its backend: they would be silently ignored. (certs.BackendTLS builds
// the TLS of the routes that do speak it.)
func (r Route) CheckPlainBackend() error {
	if r.BackendCA != "" || r.BackendCert != "" || r.BackendKey != "" {
		return errors.New("backend_ca/backend_cert/backend_key need TLS to the backend")
	}
	return nil
}
