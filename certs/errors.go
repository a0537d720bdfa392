package certs

import (
	"crypto/x509"
	"errors"
	"fmt"
)

// Errors of configuration and loading.
var (
	ErrUnknownListener      = errors.New("unknown listener")
	ErrNoServerCert         = errors.New("listener has no server certificate")
	ErrNoCA                 = errors.New("tenant has no client CA")
	ErrNotCA                = errors.New("certificate is not a CA (basicConstraints CA:TRUE missing)")
	ErrNoCertificates       = errors.New("no certificates found")
	ErrCRLSignature         = errors.New("CRL is not signed by any CA of the tenant (client_ca or intermediates)")
	ErrCRLScope             = errors.New("gatehouse needs each issuer's complete CRL")
	ErrCRLCritical          = errors.New("a critical CRL extension gatehouse cannot process makes the CRL unusable")
	ErrNotRoot              = errors.New("not a self-signed root CA: client_ca holds the tenant's roots only; list intermediate CAs in tenants[].intermediates")
	ErrRootInIntermediates  = errors.New("a self-signed root in intermediates: roots go in client_ca")
	ErrIntermediateNoRoot   = errors.New("does not chain to a root CA in client_ca")
	ErrIntermediateUnusable = errors.New("cannot issue client certificates a handshake would accept")
	ErrSharedRoot           = errors.New("tenants sharing a root must all list their intermediates, or none of them")
	ErrEmptyIdentity        = errors.New("empty identity")
	ErrBadFingerprint       = errors.New("not a hex SHA-256 digest")
	ErrBadCRLStale          = errors.New(`tls.crl_stale must be "fail" or "warn"`)
	ErrBadTicketRotation    = errors.New("tls.ticket_rotation must not be negative")
	ErrTicketKeysOpen       = errors.New("readable by other users or writable by the group: want 0600 or 0640")
	ErrTicketKeysNotFile    = errors.New("not a regular file")
	ErrTicketKeyBad         = errors.New("bad ticket key")
	ErrTicketKeyDuplicate   = errors.New("ticket key given twice")
	ErrTicketKeysTooMany    = errors.New("too many ticket keys")
	ErrTicketKeysEmpty      = errors.New("no ticket key in the file")
	ErrDuplicate            = errors.New("duplicate name")
	ErrEnvironmentName      = errors.New("an environment's name is 1 to 32 lowercase letters, digits or '-'")
	ErrEnvironmentCatchAll  = errors.New("an environment needs at least one identity rule, or it would take every certificate of its tenant")
	ErrSNIConflict          = errors.New("two certificates of one listener claim the same name")
	ErrNoDNSNames           = errors.New("certificate has no DNS name in its subjectAltName, so no SNI can choose it")
)

// Result is the outcome of one handshake or authorisation, a bounded label
// of gatehouse_tls_handshakes_total.
type Result string

// Results. Everything a client can cause maps to one of these.
const (
	ResultOK              Result = "ok"
	ResultNoCert          Result = "no_cert"
	ResultUnknownCA       Result = "unknown_ca"
	ResultExpired         Result = "expired"
	ResultNotYetValid     Result = "not_yet_valid"
	ResultRevoked         Result = "revoked"
	ResultCRLStale        Result = "crl_stale"
	ResultNoCRL           Result = "no_crl" // the tenant has CRLs, none from the certificate's issuer
	ResultNoTenant        Result = "no_tenant"
	ResultAmbiguousTenant Result = "ambiguous_tenant"
	// ResultNoEnvironment and ResultAmbiguousEnvironment refuse a
	// certificate of a tenant with environments that matches none of
	// them, or more than one.
	ResultNoEnvironment        Result = "no_environment"
	ResultAmbiguousEnvironment Result = "ambiguous_environment"
	ResultProtocolVersion      Result = "protocol_version"
	ResultOther                Result = "other"
	// ResultClientClosed is a client that closed the connection (or reset
	// it) during the handshake before it sent a certificate: health
	// checkers and load generators do. It is counted, but no refusal. A
	// client that closes after sending a certificate is refused with it.
	ResultClientClosed Result = "client_closed"
)

// AuthError is a refused client certificate, with the result that
// classifies it. Handshakes fail with it (wrapped by nothing: crypto/tls
// returns VerifyConnection's error as is), and Identify returns it.
type AuthError struct {
	Result Result
	Tenant string // known for revoked, stale-CRL and no-CRL refusals, else empty
	Detail string
	// counted is set when VerifyConnection already counted the failure, so
	// HandshakeFailed does not count it twice.
	counted bool
	leaf    *x509.Certificate // the refused certificate, when there was one
}

// Error is printable and bounded, whatever names the client's
// certificate carries: callers log it.
func (e *AuthError) Error() string {
	if e.Tenant != "" {
		return fmt.Sprintf("client certificate refused (%s, tenant %s): %s", e.Result, e.Tenant, printable(e.Detail))
	}
	return fmt.Sprintf("client certificate refused (%s): %s", e.Result, printable(e.Detail))
}

// ResultOf classifies an error returned by a handshake or by Identify.
func ResultOf(err error) Result {
	var ae *AuthError
	switch {
	case err == nil:
		return ResultOK
	case errors.As(err, &ae):
		return ae.Result
	}
	return classifyHandshakeError(err)
}
