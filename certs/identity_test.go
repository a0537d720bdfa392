package certs

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

func TestGlob(t *testing.T) {
	tests := []struct {
		pattern, s string
		sep        byte
		want       bool
	}{
		{"spiffe://acme/cloud", "spiffe://acme/cloud", '/', true},
		{"spiffe://acme/cloud", "spiffe://acme/cloudy", '/', false},
		{"spiffe://acme/*", "spiffe://acme/cloud", '/', true},
		{"spiffe://acme/*", "spiffe://acme/", '/', true},
		{"spiffe://acme/*", "spiffe://acme/cloud/deeper", '/', false},
		{"spiffe://acme/*/worker", "spiffe://acme/eu/worker", '/', true},
		{"spiffe://acme/*/worker", "spiffe://acme/eu/x/worker", '/', false},
		{"spiffe://*/cloud", "spiffe://acme/cloud", '/', true},
		{"spiffe://acme*", "spiffe://acme.evil/x", '/', false},
		{"*", "", '/', true},
		{"*", "a/b", '/', false},
		{"a*b*c", "aXbYc", '/', true},
		{"a*b*c", "aXbY/c", '/', false},
		{"*.ops.example", "batch.ops.example", '.', true},
		{"*.ops.example", "a.batch.ops.example", '.', false},
		{"*.ops.example", "ops.example", '.', false},
		{"", "", '/', true},
		{"", "x", '/', false},
	}
	for _, tc := range tests {
		if got := glob(tc.pattern, tc.s, tc.sep); got != tc.want {
			t.Errorf("glob(%q, %q, %q) = %v, want %v", tc.pattern, tc.s, tc.sep, got, tc.want)
		}
	}
}

// globRegexp is the reference: '*' is [^sep]*, everything else literal.
func globRegexp(pattern string, sep byte) *regexp.Regexp {
	parts := strings.Split(pattern, "*")
	for i, p := range parts {
		parts[i] = regexp.QuoteMeta(p)
	}
	return regexp.MustCompile(`^(?s:` + strings.Join(parts, `[^`+regexp.QuoteMeta(string(sep))+`]*`) + `)$`)
}

func FuzzGlob(f *testing.F) {
	f.Add("spiffe://acme/*", "spiffe://acme/cloud", true)
	f.Add("a*b*c", "aXbY/c", true)
	f.Add("*.ops.example", "a.b.ops.example", false)
	f.Add("**x", "yyx", true)
	f.Fuzz(func(t *testing.T, pattern, s string, slash bool) {
		if len(pattern) > 64 || len(s) > 256 {
			return
		}
		sep := byte('.')
		if slash {
			sep = '/'
		}
		if !isUTF8(pattern) || !isUTF8(s) {
			// The reference works on runes; glob on bytes. Both agree on
			// valid UTF-8, which is all a parsed URI or DNS name holds.
			return
		}
		got := glob(pattern, s, sep)
		want := globRegexp(pattern, sep).MatchString(s)
		if got != want {
			t.Fatalf("glob(%q, %q, %q) = %v, reference %v", pattern, s, sep, got, want)
		}
		if !strings.Contains(pattern, "*") && got != (pattern == s) {
			t.Fatalf("pattern without '*' %q vs %q: %v", pattern, s, got)
		}
	})
}

func isUTF8(s string) bool { return utf8.ValidString(s) }

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
			globRegexp("*.ops.example", '.').MatchString(strings.ToLower(dns)) && isUTF8(dns) ||
			uerr == nil && isUTF8(u.String()) && globRegexp("spiffe://acme/*", '/').MatchString(u.String())
		if got := m.match(cert); got != want && isUTF8(dns) && (uerr != nil || isUTF8(u.String())) {
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
