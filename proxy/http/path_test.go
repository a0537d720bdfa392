package httpproxy

import (
	"net/url"
	"slices"
	"strings"
	"testing"

	"golang.org/x/text/unicode/norm"
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
		{"/api/%c2%85", "", false, pathControl},
		{"/api/%c0%ae%c0%ae/secret", "", false, pathNotUTF8},
		{"/api/%c0%af..%c0%afsecret", "", false, pathNotUTF8},
		{"/api/%e0%80%ae", "", false, pathNotUTF8},
		{"/api/x;%ff", "", false, pathNotUTF8},
		{"/api/..%3f/secret", "", false, pathDelimiter},
		{"/api/..%23/secret", "", false, pathDelimiter},
		{"/api/x;a%3fb", "", false, pathDelimiter},
		{"/api/..%20/secret", "", false, pathDotSegment},
		{"/api/.%20/secret", "", false, pathDotSegment},
		{"/api/.../secret", "", false, pathDotSegment},
		{"/api/%20..", "", false, pathDotSegment},
		{"/api/%ef%bc%8e%ef%bc%8e/secret", "", false, pathDotSegment},
		{"/api/%e2%80%a5/secret", "", false, pathDotSegment},
		{"/api/%e2%80%a6/secret", "", false, pathDotSegment},
		{"/api/x%ef%bc%8f..%ef%bc%8fsecret", "", false, pathSeparator},
		{"/api/x%ef%bc%bcsecret", "", false, pathSeparator},
		{"/api/x%ef%bc%9bsecret", "", false, pathSeparator},
		{"/api/x%ef%bc%9f", "", false, pathDelimiter},
		{"/api/%ef%bc%85%ef%bc%92%ef%bd%85", "", false, pathDoubleEnc},
		{"/api/..a/x", "/api/..a/x", false, ""},
		{"/api/x./y", "/api/x./y", false, ""},
		{"/api/%20", "/api/ ", false, ""},
		{"/%ef%bd%81pi/x", "/ａpi/x", false, ""},
		{"/api/caf%C3%A9", "/api/café", false, ""},
	}
	for _, tc := range tests {
		p, params, why := routingPath(tc.raw)
		if p != tc.want || params != tc.params || why != tc.refusal {
			t.Errorf("routingPath(%q) = %q, %v, %q; want %q, %v, %q", tc.raw, p, params, why, tc.want, tc.params, tc.refusal)
		}
	}
}

// reading is one way a backend turns a raw path into the resource it
// serves. cut readings drop ;parameters (like the routed path); the others
// keep ';' and agree only for paths without parameters.
type reading struct {
	name string
	cut  bool
	read func(raw string) (string, bool)
	// same turns the routed path into what this reading should give for
	// it: the reading's own folding, without its resolution of dot
	// segments and delimiters.
	same func(string) string
}

// readings are the ways backends turn a raw path into the resource they
// serve: cut ;parameters per segment then decode (servlet containers),
// decode then cut, decode and keep ';' (most others), decode twice (a
// proxy chain), treat '\' as '/', decode and parse again (a '?' or '#'
// ends the path), drop trailing dots and spaces of a segment (Windows),
// fold compatibility forms (NFKC) and accept overlong UTF-8. Each then
// resolves dot segments and merges empty ones; a reading that cannot
// decode the path (the backend refuses it) reports false.
func readings() []reading {
	decode := func(s string) (string, bool) {
		d, err := url.PathUnescape(s)
		return d, err == nil
	}
	cutThenDecode := func(s string) (string, bool) {
		var out []string
		for seg := range strings.SplitSeq(s, "/") {
			name, _, _ := strings.Cut(seg, ";")
			d, ok := decode(name)
			if !ok {
				return "", false
			}
			out = append(out, d)
		}
		return strings.Join(out, "/"), true
	}
	id := func(s string) string { return s }
	then := func(first func(string) (string, bool), next func(string) string) func(string) (string, bool) {
		return func(raw string) (string, bool) {
			s, ok := first(raw)
			if !ok {
				return "", false
			}
			return next(s), true
		}
	}
	perSegment := func(f func(string) string) func(string) string {
		return func(s string) string {
			segs := strings.Split(s, "/")
			for i := range segs {
				segs[i] = f(segs[i])
			}
			return strings.Join(segs, "/")
		}
	}
	cutParams := perSegment(func(seg string) string { name, _, _ := strings.Cut(seg, ";"); return name })
	windows := perSegment(func(seg string) string {
		switch t := strings.Trim(seg, ". "); {
		case t != "" || seg == "":
			return strings.TrimRight(seg, ". ")
		case strings.Count(seg, ".") == 0:
			return ""
		case strings.Count(seg, ".") == 1:
			return "."
		default:
			return ".."
		}
	})
	parseAgain := func(s string) string {
		if i := strings.IndexAny(s, "?#"); i >= 0 {
			return s[:i]
		}
		return s
	}
	nfkc := perSegment(func(seg string) string { return norm.NFKC.String(seg) })
	// literal folds the routed path's segments as a reading does, but
	// never into a dot segment or a '/': those the reading resolves, the
	// routed path has as names.
	literal := func(fold func(string) string) func(string) string {
		return perSegment(func(seg string) string {
			switch f := fold(seg); {
			case f == "." || f == ".." || strings.Contains(f, "/"):
				return seg
			default:
				return f
			}
		})
	}
	return []reading{
		{"cut then decode", true, cutThenDecode, id},
		{"decode then cut", true, then(decode, cutParams), id},
		{"decode, parse again", true, then(cutThenDecode, parseAgain), id},
		{"decode, Windows", true, then(cutThenDecode, windows), literal(windows)},
		{"decode, NFKC", true, then(cutThenDecode, nfkc), literal(nfkc)},
		{"decode, overlong UTF-8", true, then(cutThenDecode, lenientUTF8), id},
		{"decode", false, decode, id},
		{"decode twice", false, func(raw string) (string, bool) {
			if s, ok := decode(raw); ok {
				return decode(s)
			}
			return "", false
		}, id},
		{"backslash", false, then(decode, func(s string) string { return strings.ReplaceAll(s, `\`, "/") }), id},
	}
}

// lenientUTF8 decodes the overlong two- and three-byte forms of ASCII
// (C0 AE is '.') as lenient decoders do.
func lenientUTF8(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case (c == 0xc0 || c == 0xc1) && i+1 < len(s) && s[i+1]&0xc0 == 0x80:
			b.WriteByte((c&0x1f)<<6 | s[i+1]&0x3f)
			i++
		case c == 0xe0 && i+2 < len(s) && s[i+1]&0xe0 == 0x80 && s[i+2]&0xc0 == 0x80:
			b.WriteByte((s[i+1]&0x3f)<<6 | s[i+2]&0x3f)
			i += 2
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// resolve splits a decoded path into segments, resolving dot segments and
// merging empty ones.
func resolve(s string) []string {
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
	return segs
}

// FuzzRoutingPath: a path routingPath accepts reads the same under every
// backend reading above as the path it is routed on (without ;parameters,
// the readings that keep ';' agree too), and never climbs out of it.
func FuzzRoutingPath(f *testing.F) {
	for _, s := range []string{"/", "/api/x", "/api/..;/secret", "/api/%2e%2e;/x", "/a%2fb", "/a%5cb", "/a%252e%252e/b",
		"/api;jsessionid=1/x", "/a;%2f..%2fb", "//a//b/", "/caf%C3%A9", "/a%3bb", "/100%25",
		"/api/..%3f/x", "/api/..%23/x", "/api/%c0%ae%c0%ae/x", "/api/..%20/x", "/api/.../x", "/api/%ef%bc%8e%ef%bc%8e/x",
		"/api/x%ef%bc%8f..", "/api/x./y", "/%ef%bd%81/b", "/#00", "/%20/x", "/ ."} {
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
		for _, rd := range readings() {
			if params && !rd.cut {
				continue // ';' kept by the reading: a route must allow path_params
			}
			got, ok := rd.read(raw)
			if !ok {
				continue
			}
			if segs, want := resolve(got), resolve(rd.same(p)); !slices.Equal(segs, want) {
				t.Fatalf("%q routed as %q, but read as %q (%s), want %q", raw, p, segs, rd.name, want)
			}
		}
	})
}
