package certs

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// matcher is a tenant's compiled identity list. A certificate matches when
// any single entry matches; an empty matcher matches every certificate of
// the tenant's CA.
type matcher struct {
	uris  []string // patterns, '*' within one path segment
	dns   []string // lower case patterns, '*' within one label
	cns   []string
	ous   []string
	fps   map[string]bool // lower-case hex SHA-256 of the DER certificate
	spkis map[string]bool // lower-case hex SHA-256 of the SubjectPublicKeyInfo
	empty bool
}

func compileIdentities(id policy.Identities) (*matcher, error) {
	m := &matcher{
		uris:  id.URISAN,
		cns:   id.CommonName,
		ous:   id.OrganizationalUnit,
		fps:   map[string]bool{},
		spkis: map[string]bool{},
		empty: id.Empty(),
	}
	for _, d := range id.DNSSAN {
		m.dns = append(m.dns, strings.ToLower(d))
	}
	// An empty entry would match a certificate that lacks the field.
	for _, list := range []struct {
		name string
		in   []string
	}{{"uri_san", id.URISAN}, {"dns_san", id.DNSSAN}, {"cn", id.CommonName}, {"ou", id.OrganizationalUnit}} {
		if slices.Contains(list.in, "") {
			return nil, fmt.Errorf("%s: %w", list.name, ErrEmptyIdentity)
		}
	}
	for _, set := range []struct {
		name string
		in   []string
		out  map[string]bool
	}{{"fingerprints_sha256", id.FingerprintSHA256, m.fps}, {"spki_sha256", id.SPKISHA256, m.spkis}} {
		for _, s := range set.in {
			h, err := normalizeHash(s)
			if err != nil {
				return nil, fmt.Errorf("%s %q: %w", set.name, s, err)
			}
			set.out[h] = true
		}
	}
	return m, nil
}

// normalizeHash accepts hex with or without colons, any case.
func normalizeHash(s string) (string, error) {
	h := strings.ToLower(strings.ReplaceAll(strings.TrimSpace(s), ":", ""))
	b, err := hex.DecodeString(h)
	if err != nil || len(b) != sha256.Size {
		return "", ErrBadFingerprint
	}
	return h, nil
}

// match reports whether cert is one of the identities.
func (m *matcher) match(cert *x509.Certificate) bool {
	if m.empty {
		return true
	}
	if len(m.fps) > 0 && m.fps[FingerprintSHA256(cert)] {
		return true
	}
	if len(m.spkis) > 0 && m.spkis[SPKISHA256(cert)] {
		return true
	}
	for _, p := range m.uris {
		for _, u := range cert.URIs {
			if policy.Glob(p, u.String(), '/') {
				return true
			}
		}
	}
	for _, p := range m.dns {
		for _, d := range cert.DNSNames {
			if policy.Glob(p, strings.ToLower(d), '.') {
				return true
			}
		}
	}
	for _, cn := range m.cns {
		if cert.Subject.CommonName == cn {
			return true
		}
	}
	for _, want := range m.ous {
		for _, ou := range cert.Subject.OrganizationalUnit {
			if ou == want {
				return true
			}
		}
	}
	return false
}

// FingerprintSHA256 returns the lower-case hex SHA-256 of the DER certificate.
func FingerprintSHA256(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// SPKISHA256 returns the lower-case hex SHA-256 of the certificate's
// DER SubjectPublicKeyInfo, the value to pin a key across renewals.
func SPKISHA256(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}

// DescribeTenant says in one line which client certificates the tenant
// accepts, for `gatehouse check`.
func DescribeTenant(t policy.Tenant) string {
	id := t.Identities
	crl := "no CRL"
	if t.CRL != "" {
		crl = "CRL " + t.CRL + " (one from every CA of the chain)"
	}
	from := "chaining to a root in " + t.ClientCA
	if t.Intermediates != "" {
		from = "issued by an intermediate in " + t.Intermediates + " under a root in " + t.ClientCA
	}
	envs := ""
	if len(t.Environments) > 0 {
		var list []string
		for _, e := range t.Environments {
			list = append(list, e.Name+" ("+describeIdentities(e.Identities)+")")
		}
		envs = "; each in exactly one environment of: " + strings.Join(list, ", ")
	}
	if id.Empty() {
		return fmt.Sprintf("tenant %s: ANY certificate %s (no identities narrow it); %s%s", t.ID, from, crl, envs)
	}
	return fmt.Sprintf("tenant %s: certificates %s matching any of: %s; %s%s",
		t.ID, from, describeIdentities(id), crl, envs)
}

// describeIdentities lists the identity rules, "; " between kinds.
func describeIdentities(id policy.Identities) string {
	var parts []string
	add := func(kind string, list []string) {
		if len(list) > 0 {
			parts = append(parts, kind+" "+strings.Join(list, ", "))
		}
	}
	add("URI SAN", id.URISAN)
	add("DNS SAN", id.DNSSAN)
	add("CN", id.CommonName)
	add("OU", id.OrganizationalUnit)
	add("certificate SHA-256", id.FingerprintSHA256)
	add("SPKI SHA-256", id.SPKISHA256)
	return strings.Join(parts, "; ")
}

// DescribeTLS says what the tls: settings do, one "key\tmeaning" line each,
// for `gatehouse check`.
func DescribeTLS(t policy.TLS) []string {
	stale := "fail: a CRL past its nextUpdate refuses its tenant's certificates until a fresh one is installed"
	if t.CRLStale == policy.CRLStaleWarn {
		stale = "warn: a CRL past its nextUpdate is logged once, and its tenant's certificates are accepted"
	}
	tickets := "off: every handshake is a full one"
	if !t.SessionTicketsDisabled {
		every := t.TicketRotation
		if every <= 0 {
			every = policy.DefaultTicketRotation
		}
		tickets = fmt.Sprintf("on, each listener's key replaced every %s: a ticket resumes for at most %s", shortDuration(every), shortDuration(keepTicketKeys*every))
		if t.TicketKeys != "" {
			tickets = "on, keys from " + t.TicketKeys + " (shared by the fleet, rotated by the admin): the first encrypts, all decrypt"
		}
	}
	return []string{
		"handshakes\tTLS 1.2 or 1.3, ECDHE and AEAD suites only, a client certificate required",
		"crl_stale\t" + stale,
		"session_tickets\t" + tickets,
	}
}

// shortDuration writes 6h for 6h0m0s and 1m for 1m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}
