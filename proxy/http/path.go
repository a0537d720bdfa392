package httpproxy

import (
	"net/url"
	"strings"
)

// Why a request path is refused with 400. Each is also the access log's
// reason, so the set is closed.
const (
	pathNotAbsolute = "bad request: path: not absolute"
	pathBadEscape   = "bad request: path: bad percent-encoding"
	pathDotSegment  = "bad request: path: dot segment"
	pathSeparator   = "bad request: path: backslash or encoded slash or semicolon"
	pathDoubleEnc   = "bad request: path: double percent-encoding"
	pathControl     = "bad request: path: control character"
	pathParams      = "bad request: path: ;parameter on a route without path_params"
)

// routingPath returns the path a request is routed on, from the path as it
// goes to the backend (raw, URL.EscapedPath): every segment with its
// ;parameters cut off (as the servlet specification and Tomcat read them)
// and then percent-decoded, empty segments merged, a trailing '/' kept.
// params reports whether some segment carried ;parameters.
//
// A path that backends could read as another path is refused, with the
// reason: a segment that decodes to "." or "..", whatever its spelling
// ("..;x", "%2e%2e", ".%2E"); a backslash or an encoded '/', '\' or ';'
// (%2f, %5c, %3b), which some backends decode before they split the path,
// in the segment or its parameters; a '%' escape left after decoding
// (double encoding, "%252e"); a control character (%00 …). The path itself
// is forwarded unchanged.
func routingPath(raw string) (p string, params bool, refusal string) {
	if !strings.HasPrefix(raw, "/") {
		return "", false, pathNotAbsolute
	}
	if plainPath(raw) {
		return raw, false, "" // the common case, without a copy
	}
	return normalisePath(raw)
}

// normalisePath is routingPath for a path that is not plain.
func normalisePath(raw string) (p string, params bool, refusal string) {
	var b strings.Builder
	b.Grow(len(raw))
	segs := strings.Split(raw[1:], "/")
	for i, seg := range segs {
		name, ps, hasParams := strings.Cut(seg, ";")
		params = params || hasParams
		dec, err := url.PathUnescape(name)
		// The parameters are checked too: a backend that decodes before it
		// cuts them would find a '/' in "x;%2f..".
		decParams, perr := url.PathUnescape(ps)
		switch {
		case err != nil || perr != nil:
			return "", false, pathBadEscape
		case dec == "." || dec == "..":
			return "", false, pathDotSegment
		case strings.ContainsAny(dec, `/\;`) || strings.ContainsAny(decParams, `/\`) || strings.Contains(seg, `\`):
			return "", false, pathSeparator
		case strings.ContainsFunc(dec+decParams, func(r rune) bool { return r < 0x20 || r == 0x7f }):
			return "", false, pathControl
		case hasEscape(dec) || hasEscape(decParams):
			return "", false, pathDoubleEnc
		case dec == "":
			if i == len(segs)-1 && b.Len() > 0 {
				b.WriteByte('/')
			}
			continue
		}
		b.WriteByte('/')
		b.WriteString(dec)
	}
	if b.Len() == 0 {
		return "/", params, ""
	}
	return b.String(), params, ""
}

// hasEscape reports a '%' followed by two hex digits.
func hasEscape(s string) bool {
	for i := strings.IndexByte(s, '%'); i >= 0 && i+2 < len(s); {
		if isHex(s[i+1]) && isHex(s[i+2]) {
			return true
		}
		j := strings.IndexByte(s[i+1:], '%')
		if j < 0 {
			break
		}
		i += 1 + j
	}
	return false
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// plainPath reports a path that routingPath would return as it is: no
// escape, ';', backslash or control character, no empty, "." or ".."
// segment.
func plainPath(raw string) bool {
	segStart := 1
	for i := 1; i <= len(raw); i++ {
		if i < len(raw) {
			c := raw[i]
			if c < 0x20 || c == 0x7f || c == '%' || c == ';' || c == '\\' {
				return false
			}
			if c != '/' {
				continue
			}
		}
		switch raw[segStart:i] {
		case "":
			if i < len(raw) {
				return false // "//"; a trailing '/' is kept
			}
		case ".", "..":
			return false
		}
		segStart = i + 1
	}
	return true
}
