package policy

import (
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"
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
		if got := Glob(tc.pattern, tc.s, tc.sep); got != tc.want {
			t.Errorf("Glob(%q, %q, %q) = %v, want %v", tc.pattern, tc.s, tc.sep, got, tc.want)
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
		got := Glob(pattern, s, sep)
		want := globRegexp(pattern, sep).MatchString(s)
		if got != want {
			t.Fatalf("Glob(%q, %q, %q) = %v, reference %v", pattern, s, sep, got, want)
		}
		if !strings.Contains(pattern, "*") && got != (pattern == s) {
			t.Fatalf("pattern without '*' %q vs %q: %v", pattern, s, got)
		}
	})
}

func isUTF8(s string) bool { return utf8.ValidString(s) }
