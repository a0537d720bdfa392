package httpproxy

import (
	"strings"
	"testing"
)

// The keep-alive path runs these at every request: they must not allocate
// (issue 21). AllocsPerRun counts, it does not time.

func TestIdentityHeaderNoAllocs(t *testing.T) {
	names := []string{"Accept", "User-Agent", "X-Forwarded-For", "X_Forwarded_Host", "Forwarded",
		"X-Real-Ip", "Content-Type", "X-Client-Cert-Subject", "X-Gatehouse-Tenant", "Authorization"}
	if n := testing.AllocsPerRun(100, func() {
		for _, name := range names {
			isIdentityHeader(name)
		}
	}); n != 0 {
		t.Errorf("isIdentityHeader: %v allocations per request's headers, want 0", n)
	}
}

// FuzzIdentityHeader holds the in-place comparison to the folded copy it
// replaced, on the names net/http lets through (tokens).
func FuzzIdentityHeader(f *testing.F) {
	for _, s := range append(identityHeaders, "X-Forwarded-For", "x_forwarded_host", "X-GATEHOUSE-TENANT",
		"X-Client-Certificate", "X-Client-Cer", "Forwarded-X", "X-Real-IP", "X_REAL_IP", "Accept", "", "x-forwarded") {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		for i := range len(name) {
			if c := name[i]; c <= ' ' || c >= 0x7f {
				return // not a header name net/http accepts
			}
		}
		n := strings.ToLower(strings.ReplaceAll(name, "_", "-"))
		want := false
		for _, id := range identityHeaders {
			want = want || n == id
		}
		want = want || strings.HasPrefix(n, "x-forwarded-") || strings.HasPrefix(n, "x-gatehouse-") || strings.HasPrefix(n, "x-client-cert")
		if got := isIdentityHeader(name); got != want {
			t.Errorf("isIdentityHeader(%q) = %v, want %v", name, got, want)
		}
	})
}
