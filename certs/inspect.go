package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// Inspect describes every certificate, CSR, CRL or key in data (PEM, any
// number of blocks, or one DER object) in a screen of text. Private keys are
// named, never shown.
func Inspect(data []byte, now time.Time) (string, error) {
	if certs, err := parseCertsPEM(data); err == nil && len(certs) > 3 && onlyCertificates(data) {
		return describeBundle(certs, now), nil
	}
	var b strings.Builder
	rest := data
	n := 0
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if n > 0 {
			b.WriteString("\n")
		}
		n++
		if err := inspectBlock(&b, blk.Type, blk.Bytes, now); err != nil {
			return "", fmt.Errorf("PEM block %d (%s): %w", n, blk.Type, err)
		}
	}
	if n > 0 {
		return b.String(), nil
	}
	for _, kind := range []string{"CERTIFICATE", "CERTIFICATE REQUEST", "X509 CRL"} {
		var tb strings.Builder
		if inspectBlock(&tb, kind, data, now) == nil {
			return tb.String(), nil
		}
	}
	if looksLikePKCS12(data) {
		return "", fmt.Errorf("%w: this looks like PKCS#12; use import-p12", ErrUnknownFormat)
	}
	return "", ErrUnknownFormat
}

func inspectBlock(b *strings.Builder, typ string, der []byte, now time.Time) error {
	switch typ {
	case "CERTIFICATE":
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return err
		}
		describeCert(b, c, now)
	case "CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST":
		r, err := x509.ParseCertificateRequest(der)
		if err != nil {
			return err
		}
		sig := "valid"
		if err := r.CheckSignature(); err != nil {
			sig = "INVALID: " + err.Error()
		}
		fmt.Fprintf(b, "Certificate request (PKCS#10)\n")
		fmt.Fprintf(b, "  Subject:    %s\n", r.Subject)
		fmt.Fprintf(b, "  Key:        %s\n", keyDesc(r.PublicKey))
		sans(b, r.DNSNames, r.IPAddresses, r.URIs, r.EmailAddresses)
		fmt.Fprintf(b, "  Signature:  %s (%s)\n", r.SignatureAlgorithm, sig)
	case "X509 CRL":
		l, err := x509.ParseRevocationList(der)
		if err != nil {
			return err
		}
		fmt.Fprintf(b, "CRL\n")
		fmt.Fprintf(b, "  Issuer:      %s\n", l.Issuer)
		if l.Number != nil {
			fmt.Fprintf(b, "  Number:      %s\n", l.Number)
		}
		fmt.Fprintf(b, "  This update: %s\n", l.ThisUpdate.UTC().Format(time.RFC3339))
		next := "none"
		if !l.NextUpdate.IsZero() {
			next = l.NextUpdate.UTC().Format(time.RFC3339) + relative(now, l.NextUpdate, "stale since", "valid for")
		}
		fmt.Fprintf(b, "  Next update: %s\n", next)
		fmt.Fprintf(b, "  Revoked:     %d\n", len(l.RevokedCertificateEntries))
		const show = 10
		for i, e := range l.RevokedCertificateEntries {
			if i == show {
				fmt.Fprintf(b, "    … %d more\n", len(l.RevokedCertificateEntries)-show)
				break
			}
			fmt.Fprintf(b, "    %s  %s  %s\n", colonHex(e.SerialNumber.Bytes()), e.RevocationTime.UTC().Format(time.RFC3339), reasonName(e.ReasonCode))
		}
	case "PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY":
		k, err := ParseKeyPEM(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
		if err != nil {
			return err
		}
		fmt.Fprintf(b, "Private key: %s (not shown)\n", keyDesc(k.Public()))
	case "ENCRYPTED PRIVATE KEY":
		fmt.Fprintf(b, "Encrypted private key (not shown)\n")
	default:
		return fmt.Errorf("%w: PEM type %q", ErrUnknownFormat, typ)
	}
	return nil
}

func describeCert(b *strings.Builder, c *x509.Certificate, now time.Time) {
	kind := "Certificate"
	switch {
	case c.IsCA && string(c.RawIssuer) == string(c.RawSubject):
		kind = "CA certificate (self-signed)"
	case c.IsCA:
		kind = "CA certificate"
	}
	fmt.Fprintf(b, "%s\n", kind)
	fmt.Fprintf(b, "  Subject:    %s\n", c.Subject)
	fmt.Fprintf(b, "  Issuer:     %s\n", c.Issuer)
	fmt.Fprintf(b, "  Serial:     %s\n", colonHex(c.SerialNumber.Bytes()))
	fmt.Fprintf(b, "  Valid:      %s to %s%s\n", c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339), validity(now, c))
	fmt.Fprintf(b, "  Key:        %s\n", keyDesc(c.PublicKey))
	fmt.Fprintf(b, "  Signature:  %s\n", c.SignatureAlgorithm)
	sans(b, c.DNSNames, c.IPAddresses, c.URIs, c.EmailAddresses)
	if c.IsCA {
		pl := "unlimited"
		if c.MaxPathLen > 0 || c.MaxPathLenZero {
			pl = fmt.Sprint(c.MaxPathLen)
		}
		fmt.Fprintf(b, "  CA:         yes, path length %s\n", pl)
	}
	if u := keyUsages(c.KeyUsage); u != "" {
		fmt.Fprintf(b, "  Key usage:  %s\n", u)
	}
	if u := extKeyUsages(c.ExtKeyUsage); u != "" {
		fmt.Fprintf(b, "  Ext usage:  %s\n", u)
	}
	fmt.Fprintf(b, "  SHA-256:    %s\n", FingerprintSHA256(c))
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	fmt.Fprintf(b, "  SPKI-256:   %s\n", hex.EncodeToString(sum[:]))
}

func validity(now time.Time, c *x509.Certificate) string {
	switch {
	case now.Before(c.NotBefore):
		return " (NOT YET VALID)"
	case now.After(c.NotAfter):
		return " (EXPIRED)"
	}
	return fmt.Sprintf(" (%d days left)", int(c.NotAfter.Sub(now).Hours()/24))
}

func relative(now, t time.Time, past, future string) string {
	d := t.Sub(now).Round(time.Minute)
	if d < 0 {
		return fmt.Sprintf(" (%s %s)", strings.ToUpper(past), -d)
	}
	return fmt.Sprintf(" (%s %s)", future, d)
}

func sans(b *strings.Builder, dns []string, ips []net.IP, uris []*url.URL, emails []string) {
	var parts []string
	for _, d := range dns {
		parts = append(parts, "DNS:"+d)
	}
	for _, ip := range ips {
		parts = append(parts, "IP:"+ip.String())
	}
	for _, u := range uris {
		parts = append(parts, "URI:"+u.String())
	}
	for _, e := range emails {
		parts = append(parts, "email:"+e)
	}
	if len(parts) > 0 {
		fmt.Fprintf(b, "  SANs:       %s\n", strings.Join(parts, ", "))
	}
}

func keyDesc(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA %d", k.N.BitLen())
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return fmt.Sprintf("%T", pub)
}

func keyUsages(u x509.KeyUsage) string {
	names := []string{"digitalSignature", "contentCommitment", "keyEncipherment", "dataEncipherment",
		"keyAgreement", "keyCertSign", "cRLSign", "encipherOnly", "decipherOnly"}
	var out []string
	for i, n := range names {
		if u&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	return strings.Join(out, ", ")
}

func extKeyUsages(us []x509.ExtKeyUsage) string {
	var out []string
	for _, u := range us {
		switch u {
		case x509.ExtKeyUsageServerAuth:
			out = append(out, "serverAuth")
		case x509.ExtKeyUsageClientAuth:
			out = append(out, "clientAuth")
		case x509.ExtKeyUsageAny:
			out = append(out, "any")
		default:
			out = append(out, fmt.Sprintf("#%d", u))
		}
	}
	return strings.Join(out, ", ")
}

func colonHex(b []byte) string {
	if len(b) == 0 {
		return "00"
	}
	h := hex.EncodeToString(b)
	var s strings.Builder
	for i := 0; i < len(h); i += 2 {
		if i > 0 {
			s.WriteByte(':')
		}
		s.WriteString(h[i : i+2])
	}
	return s.String()
}

// looksLikePKCS12 checks for the PFX outer structure: a SEQUENCE starting
// with INTEGER 3.
func looksLikePKCS12(data []byte) bool {
	var pfx struct {
		Version  int
		AuthSafe asn1.RawValue
		MacData  asn1.RawValue `asn1:"optional"`
	}
	_, err := asn1.Unmarshal(data, &pfx)
	return err == nil && pfx.Version == 3
}

func reasonName(code int) string {
	for n, c := range Reasons {
		if c == code {
			return n
		}
	}
	return fmt.Sprintf("reason %d", code)
}

// onlyCertificates reports whether every PEM block is a certificate.
func onlyCertificates(data []byte) bool {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return true
		}
		if b.Type != "CERTIFICATE" {
			return false
		}
	}
}

// describeBundle gives a bundle of many certificates one line each, so that
// it still fits a screen.
func describeBundle(certs []*x509.Certificate, now time.Time) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Bundle of %d certificates (subject, expiry, SHA-256 prefix)\n", len(certs))
	for i, c := range certs {
		kind := "   "
		if c.IsCA {
			kind = "CA "
		}
		fmt.Fprintf(&b, "%3d %s%s  %s%s  %s\n", i+1, kind, c.Subject, c.NotAfter.UTC().Format("2006-01-02"),
			validity(now, c), FingerprintSHA256(c)[:16])
	}
	return b.String()
}
