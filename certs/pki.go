package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/gatehouse-dmz/gatehouse/internal/atomicfile"
)

// KeyType names a key algorithm for new keys.
type KeyType string

// Key types. ECDSA P-256 is the default: fast handshakes, universally
// supported; RSA 3072 for old peers; Ed25519 where both ends support it.
const (
	KeyECDSAP256 KeyType = "ecdsa-p256"
	KeyRSA3072   KeyType = "rsa-3072"
	KeyEd25519   KeyType = "ed25519"
)

// Files of a CA directory.
const (
	CACertFile   = "ca.pem"
	CAKeyFile    = "ca.key"
	CAIndexFile  = "revoked.txt" // one revoked serial a line
	CACRLNumFile = "crlnumber"
)

// Errors of the PKI operations.
var (
	ErrUnknownKeyType = errors.New("unknown key type (want ecdsa-p256, rsa-3072 or ed25519)")
	ErrExists         = errors.New("file exists (use --force to replace it)")
	ErrNoKey          = errors.New("no private key found")
	ErrKeyMismatch    = errors.New("private key does not belong to the certificate")
	ErrUsage          = errors.New("exactly one of server or client usage is required")
	ErrCSRSignature   = errors.New("CSR signature does not verify")
	ErrUnknownFormat  = errors.New("not a certificate, CSR, CRL or key in PEM or DER")
	ErrBadSerial      = errors.New("bad serial number")
	ErrUnknownReason  = errors.New("unknown revocation reason")
)

// GenerateKey makes a new private key; the empty type means ECDSA P-256.
func GenerateKey(kt KeyType) (crypto.Signer, error) {
	switch kt {
	case "", KeyECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case KeyRSA3072:
		return rsa.GenerateKey(rand.Reader, 3072)
	case KeyEd25519:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	}
	return nil, fmt.Errorf("%q: %w", kt, ErrUnknownKeyType)
}

// MarshalKeyPEM encodes a private key as PKCS#8 PEM ("PRIVATE KEY").
func MarshalKeyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseKeyPEM reads the first private key of a PEM file: PKCS#8, SEC 1
// ("EC PRIVATE KEY", what `openssl ecparam -genkey` writes) or PKCS#1.
func ParseKeyPEM(data []byte) (crypto.Signer, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, ErrNoKey
		}
		var k any
		var err error
		switch b.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(b.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			return nil, errors.New("encrypted private keys are not supported; decrypt with openssl pkey first")
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", b.Type, err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("key type %T: %w", k, ErrUnknownKeyType)
		}
		return s, nil
	}
}

// WriteKeyFile writes key as PKCS#8 PEM with mode 0600. Without force an
// existing file is an error, so a key is never silently replaced.
func WriteKeyFile(path string, key crypto.Signer, force bool) error {
	b, err := MarshalKeyPEM(key)
	if err != nil {
		return err
	}
	return WriteFile(path, b, 0o600, force)
}

// WriteCertFile writes certificates (DER) as one PEM file, mode 0644.
func WriteCertFile(path string, force bool, ders ...[]byte) error {
	var b []byte
	for _, d := range ders {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: d})...)
	}
	return WriteFile(path, b, 0o644, force)
}

// WriteFile writes data to path with mode, whole (a reader, such as a
// daemon watching a CRL, sees the old file or the new one). Unless force,
// anything already at path, a symbolic link included, is refused with
// ErrExists, in the same step that creates the file; with force it is
// replaced (a symbolic link itself, never what it points to).
func WriteFile(path string, data []byte, mode os.FileMode, force bool) error {
	if force {
		return atomicfile.Write(path, data, mode)
	}
	err := atomicfile.Create(path, data, mode)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s: %w", path, ErrExists)
	}
	return err
}

// ReadCertsFile reads every certificate of a PEM file, or one DER certificate.
func ReadCertsFile(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	certs, err := parseCertsPEM(data)
	if errors.Is(err, ErrNoCertificates) {
		c, derr := x509.ParseCertificate(data)
		if derr != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return []*x509.Certificate{c}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return certs, nil
}

// ReadKeyFile reads a private key file.
func ReadKeyFile(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	k, err := ParseKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}
