package certs

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// FuzzMatcher feeds outside-controlled certificate fields to a matcher and
// checks it agrees with the per-kind reference rules.
func FuzzMatcher(f *testing.F) {
	f.Add("spiffe://acme/cloud", "batch.ops.example", "acme", "payments")
	f.Add("spiffe://acme/a/b", "OPS.example", "", "")
	f.Fuzz(func(t *testing.T, uri, dns, cn, ou string) {
		m, err := compileIdentities(policy.Identities{
			URISAN:             []string{"spiffe://acme/*"},
			DNSSAN:             []string{"*.OPS.example"},
			CommonName:         []string{"acme"},
			OrganizationalUnit: []string{"payments"},
		})
		if err != nil {
			t.Fatal(err)
		}
		cert := &x509.Certificate{Subject: pkix.Name{CommonName: cn, OrganizationalUnit: []string{ou}}, DNSNames: []string{dns}}
		u, uerr := url.Parse(uri)
		if uerr == nil {
			cert.URIs = []*url.URL{u}
		}
		want := cn == "acme" || ou == "payments" ||
			policy.Glob("*.ops.example", strings.ToLower(dns), '.') && utf8.ValidString(dns) ||
			uerr == nil && utf8.ValidString(u.String()) && policy.Glob("spiffe://acme/*", u.String(), '/')
		if got := m.match(cert); got != want && utf8.ValidString(dns) && (uerr != nil || utf8.ValidString(u.String())) {
			t.Fatalf("match(uri %q dns %q cn %q ou %q) = %v, want %v", uri, dns, cn, ou, got, want)
		}
	})
}

func TestMatcherKinds(t *testing.T) {
	leaf := &x509.Certificate{
		Raw:                     []byte("certificate"),
		RawSubjectPublicKeyInfo: []byte("spki"),
		Subject:                 pkix.Name{CommonName: "acme-prod", OrganizationalUnit: []string{"ops", "payments"}},
		DNSNames:                []string{"Client.Acme.Example"},
		URIs:                    []*url.URL{{Scheme: "spiffe", Host: "acme", Path: "/cloud"}},
	}
	fp, spki := FingerprintSHA256(leaf), SPKISHA256(leaf)
	colons := func(h string) string {
		var b strings.Builder
		for i := 0; i < len(h); i += 2 {
			if i > 0 {
				b.WriteByte(':')
			}
			b.WriteString(strings.ToUpper(h[i : i+2]))
		}
		return b.String()
	}
	tests := []struct {
		name string
		id   policy.Identities
		want bool
	}{
		{"empty matches all", policy.Identities{}, true},
		{"uri exact", policy.Identities{URISAN: []string{"spiffe://acme/cloud"}}, true},
		{"uri other", policy.Identities{URISAN: []string{"spiffe://acme/edge"}}, false},
		{"dns case-insensitive", policy.Identities{DNSSAN: []string{"client.acme.example"}}, true},
		{"dns wildcard", policy.Identities{DNSSAN: []string{"*.ACME.example"}}, true},
		{"cn exact", policy.Identities{CommonName: []string{"acme-prod"}}, true},
		{"cn is not a prefix", policy.Identities{CommonName: []string{"acme"}}, false},
		{"ou any of", policy.Identities{OrganizationalUnit: []string{"payments"}}, true},
		{"fingerprint with colons", policy.Identities{FingerprintSHA256: []string{colons(fp)}}, true},
		{"fingerprint other", policy.Identities{FingerprintSHA256: []string{strings.Repeat("ab", 32)}}, false},
		{"spki", policy.Identities{SPKISHA256: []string{spki}}, true},
		{"spki is not the fingerprint", policy.Identities{SPKISHA256: []string{fp}}, false},
		{"any entry suffices", policy.Identities{CommonName: []string{"nope"}, OrganizationalUnit: []string{"ops"}}, true},
	}
	for _, tc := range tests {
		m, err := compileIdentities(tc.id)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := m.match(leaf); got != tc.want {
			t.Errorf("%s: match = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestEmptyIdentityRefused: an empty entry in any name list would match a
// certificate that lacks the field, so it is refused.
func TestEmptyIdentityRefused(t *testing.T) {
	for name, id := range map[string]policy.Identities{
		"cn":      {CommonName: []string{""}},
		"ou":      {OrganizationalUnit: []string{"ops", ""}},
		"dns_san": {DNSSAN: []string{""}},
		"uri_san": {URISAN: []string{""}},
	} {
		if _, err := compileIdentities(id); !errors.Is(err, ErrEmptyIdentity) {
			t.Errorf("%s: compileIdentities = %v, want ErrEmptyIdentity", name, err)
		}
	}
}
