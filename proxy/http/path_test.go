package httpproxy

import (
	"net/url"
	"slices"
	"strings"
	"testing"
)

func TestRoutingPath(t *testing.T) {
	tests := []struct {
		raw, want string
		params    bool
		refusal   string
	}{
		{"/", "/", false, ""},
		{"/api/orders/42", "/api/orders/42", false, ""},
		{"/api/", "/api/", false, ""},
		{"//api//x", "/api/x", false, ""},
		{"/caf%C3%A9/a%20b", "/café/a b", false, ""},
		{"/file%2ejson", "/file.json", false, ""},
		{"/100%25", "/100%", false, ""},
		{"/api;jsessionid=1/x", "/api/x", true, ""},
		{"/api/x;v=2", "/api/x", true, ""},
		{"api", "", false, pathNotAbsolute},
		{"/a%zz", "", false, pathBadEscape},
		{"/api/..", "", false, pathDotSegment},
		{"/api/./x", "", false, pathDotSegment},
		{"/api/..;/secret", "", false, pathDotSegment},
		{"/api/%2e%2e;/secret", "", false, pathDotSegment},
		{"/api/%2E%2E/secret", "", false, pathDotSegment},
		{"/api/.%2e/secret", "", false, pathDotSegment},
		{"/api/..;x=1/secret", "", false, pathDotSegment},
		{"/api%2f..%2fsecret", "", false, pathSeparator},
		{"/api%2Fsecret", "", false, pathSeparator},
		{"/api%5csecret", "", false, pathSeparator},
		{`/api\secret`, "", false, pathSeparator},
		{"/api%3b/x", "", false, pathSeparator},
		{"/api/x;%2f..%2fadmin", "", false, pathSeparator},
		{"/api/x;a\\b", "", false, pathSeparator},
		{"/api/x;%252e", "", false, pathDoubleEnc},
		{"/api/%252e%252e/secret", "", false, pathDoubleEnc},
		{"/api/%252f", "", false, pathDoubleEnc},
		{"/api/%00", "", false, pathControl},
		{"/api/%0d%0aX:", "", false, pathControl},
		{"/api/%7f", "", false, pathControl},
	}
	for _, tc := range tests {
		p, params, why := routingPath(tc.raw)
		if p != tc.want || params != tc.params || why != tc.refusal {
			t.Errorf("routingPath(%q) = %q, %v, %q; want %q, %v, %q", tc.raw, p, params, why, tc.want, tc.params, tc.refusal)
		}
	}
}

// readings are the ways backends turn a raw path into the resource they
// serve: cut ;parameters per segment then decode (servlet containers),
// decode then cut, decode and keep ';' (most others), decode twice (a proxy
// chain), and treat '\' as '/'. Each resolves dot segments and merges empty
// ones; a reading that cannot decode the path (the backend refuses it) is
// nil.
func readings(raw string) [][]string {
	const bad = "\x00bad"
	decode := func(s string) string {
		if d, err := url.PathUnescape(s); err == nil {
			return d
		}
		return bad
	}
	cut := func(s string) string {
		var out []string
		for seg := range strings.SplitSeq(s, "/") {
			name, _, _ := strings.Cut(seg, ";")
			out = append(out, name)
		}
		return strings.Join(out, "/")
	}
	cutThenDecode := func(s string) string {
		var out []string
		for seg := range strings.SplitSeq(s, "/") {
			name, _, _ := strings.Cut(seg, ";")
			out = append(out, decode(name))
		}
		return strings.Join(out, "/")
	}
	var all [][]string
	for _, s := range []string{cutThenDecode(raw), cut(decode(raw)), decode(raw), decode(decode(raw)), strings.ReplaceAll(decode(raw), `\`, "/")} {
		if strings.Contains(s, bad) {
			all = append(all, nil)
			continue
		}
		segs := []string{}
		for seg := range strings.SplitSeq(s, "/") {
			switch seg {
			case "", ".":
			case "..":
				if len(segs) > 0 {
					segs = segs[:len(segs)-1]
				}
			default:
				segs = append(segs, seg)
			}
		}
		all = append(all, segs)
	}
	return all
}

// FuzzRoutingPath: a path routingPath accepts reads the same under every
// backend reading above as the path it is routed on (without ;parameters,
// the readings that keep ';' agree too), and never climbs out of it.
func FuzzRoutingPath(f *testing.F) {
	for _, s := range []string{"/", "/api/x", "/api/..;/secret", "/api/%2e%2e;/x", "/a%2fb", "/a%5cb", "/a%252e%252e/b",
		"/api;jsessionid=1/x", "/a;%2f..%2fb", "//a//b/", "/caf%C3%A9", "/a%3bb", "/100%25"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		if strings.HasPrefix(raw, "/") && plainPath(raw) {
			if p, params, why := normalisePath(raw); p != raw || params || why != "" {
				t.Fatalf("plain path %q normalises to %q, %v, %q", raw, p, params, why)
			}
		}
		p, params, why := routingPath(raw)
		if why != "" {
			return
		}
		want := []string{}
		for seg := range strings.SplitSeq(p, "/") {
			if seg != "" {
				want = append(want, seg)
			}
		}
		for i, segs := range readings(raw) {
			if params && i >= 2 {
				break // ';' kept by the reading: a route must allow path_params
			}
			if segs != nil && !slices.Equal(segs, want) {
				t.Fatalf("%q routed as %q, but read as %q (reading %d)", raw, p, segs, i)
			}
		}
	})
}
