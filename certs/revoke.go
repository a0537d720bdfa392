package certs

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"github.com/gatehouse-dmz/gatehouse/internal/atomicfile"
)

// Revocation is one entry of a CA's revocation index.
type Revocation struct {
	Serial *big.Int
	Time   time.Time
	Reason int // RFC 5280 CRLReason
}

// Reasons maps the names `gatehouse certs revoke --reason` takes to RFC 5280
// CRLReason codes.
var Reasons = map[string]int{
	"unspecified": 0, "keyCompromise": 1, "cACompromise": 2, "affiliationChanged": 3,
	"superseded": 4, "cessationOfOperation": 5, "certificateHold": 6, "privilegeWithdrawn": 9,
}

// Revoked reads the CA's revocation index.
func (ca *CA) Revoked() ([]Revocation, error) {
	data, err := os.ReadFile(filepath.Join(ca.Dir, CAIndexFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Revocation
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 {
			return nil, fmt.Errorf("%s line %d: want \"<hex serial> <unix time> <reason code>\"", CAIndexFile, n)
		}
		s, ok := new(big.Int).SetString(f[0], 16)
		sec, err1 := strconv.ParseInt(f[1], 10, 64)
		reason, err2 := strconv.Atoi(f[2])
		if !ok || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("%s line %d: malformed", CAIndexFile, n)
		}
		out = append(out, Revocation{Serial: s, Time: time.Unix(sec, 0).UTC(), Reason: reason})
	}
	return out, sc.Err()
}

// ParseSerial reads a serial in hex, with or without colons or 0x.
func ParseSerial(s string) (*big.Int, error) {
	h := strings.TrimPrefix(strings.ToLower(strings.ReplaceAll(s, ":", "")), "0x")
	n, ok := new(big.Int).SetString(h, 16)
	if !ok || n.Sign() <= 0 {
		return nil, fmt.Errorf("%q: %w", s, ErrBadSerial)
	}
	return n, nil
}

// Revoke adds serial to the CA's index; revoking twice is a no-op. The CRL
// changes only when `crl` issues a new one.
func (ca *CA) Revoke(serial *big.Int, reason int) error {
	list, err := ca.Revoked()
	if err != nil {
		return fmt.Errorf("revoke: %w", err)
	}
	for _, r := range list {
		if r.Serial.Cmp(serial) == 0 {
			return nil
		}
	}
	var b strings.Builder
	b.WriteString("# serial (hex) revocation time (unix) reason (RFC 5280 code)\n")
	for _, r := range append(list, Revocation{Serial: serial, Time: ca.now(), Reason: reason}) {
		fmt.Fprintf(&b, "%x %d %d\n", r.Serial, r.Time.Unix(), r.Reason)
	}
	if err := atomicfile.Write(filepath.Join(ca.Dir, CAIndexFile), []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("revoke: %w", err)
	}
	return nil
}

// CRL issues a CRL of every revoked serial, valid for validity (zero: 7
// days), with the next CRL number. It returns DER.
func (ca *CA) CRL(validity time.Duration) ([]byte, error) {
	if validity <= 0 {
		validity = 7 * 24 * time.Hour
	}
	list, err := ca.Revoked()
	if err != nil {
		return nil, fmt.Errorf("crl: %w", err)
	}
	numPath := filepath.Join(ca.Dir, CACRLNumFile)
	num := big.NewInt(0)
	if b, err := os.ReadFile(numPath); err == nil {
		if _, ok := num.SetString(strings.TrimSpace(string(b)), 16); !ok {
			return nil, fmt.Errorf("crl: %s is not a hex number", numPath)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("crl: %w", err)
	}
	num.Add(num, big.NewInt(1))
	now := ca.now()
	tmpl := &x509.RevocationList{Number: num, ThisUpdate: now.Add(-5 * time.Minute), NextUpdate: now.Add(validity)}
	for _, r := range list {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{
			SerialNumber: r.Serial, RevocationTime: r.Time, ReasonCode: r.Reason,
		})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.Cert, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("crl: %w", err)
	}
	if err := atomicfile.Write(numPath, []byte(fmt.Sprintf("%x\n", num)), 0o644); err != nil {
		return nil, fmt.Errorf("crl: %w", err)
	}
	return der, nil
}

// EncodeP12 bundles key, certificate and chain as PKCS#12 with modern
// encryption (AES-256-CBC, PBKDF2, SHA-256 MAC).
func EncodeP12(key crypto.Signer, cert *x509.Certificate, chain []*x509.Certificate, password string) ([]byte, error) {
	if !publicKeyEqual(cert.PublicKey, key.Public()) {
		return nil, ErrKeyMismatch
	}
	b, err := pkcs12.Modern.Encode(key, cert, chain, password)
	if err != nil {
		return nil, fmt.Errorf("encode pkcs12: %w", err)
	}
	return b, nil
}

// DecodeP12 reads a PKCS#12 file with one key and certificate (and an
// optional chain), as written by OpenSSL, Windows or Java.
func DecodeP12(data []byte, password string) (crypto.Signer, *x509.Certificate, []*x509.Certificate, error) {
	k, cert, chain, err := pkcs12.DecodeChain(data, password)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("decode pkcs12: %w", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, nil, fmt.Errorf("decode pkcs12: key type %T: %w", k, ErrUnknownKeyType)
	}
	return s, cert, chain, nil
}

func newSerial() (*big.Int, error) {
	// 127 random bits: unique, unpredictable, positive and within the 20
	// octets RFC 5280 allows.
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}
