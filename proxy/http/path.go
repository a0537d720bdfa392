package httpproxy

import (
	"net/url"
	"strings"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// Why a request path is refused with 400. Each is also the access log's
// reason, so the set is closed.
const (
	pathNotAbsolute = "bad request: path: not absolute"
	pathBadEscape   = "bad request: path: bad percent-encoding"
	pathNotUTF8     = "bad request: path: not UTF-8"
	pathDotSegment  = "bad request: path: dot segment"
	pathSeparator   = "bad request: path: backslash or encoded slash or semicolon"
	pathDelimiter   = "bad request: path: encoded '?' or '#'"
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
// reason:
//   - a dot segment in any spelling: a segment that decodes to dots and
//     spaces only ("..;x", "%2e%2e", ".%2E", "...", ".. ": Windows drops
//     trailing dots and spaces), also once NFKC-normalised ("．．", "‥",
//     as backends that fold Unicode compatibility forms read them);
//   - a backslash, or an encoded '/', '\' or ';' (%2f, %5c, %3b), which
//     some backends decode before they split the path, in the segment or
//     its parameters, also as compatibility forms ("／", "＼");
//   - an encoded '?' or '#', which a backend that decodes the target before
//     parsing it takes for the end of the path ("..%3f" is "..");
//   - a segment that is not UTF-8 once decoded, such as overlong forms of
//     '.' and '/' ("%c0%ae") that lenient decoders accept;
//   - a '%' escape left after decoding, also as a compatibility form
//     (double encoding, "%252e", "％２ｅ"), and a control character (%00 …).
//
// The path itself is forwarded as net/url writes it (see the package doc).
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
		if err != nil || perr != nil {
			return "", false, pathBadEscape
		}
		if !utf8.ValidString(dec) || !utf8.ValidString(decParams) {
			return "", false, pathNotUTF8
		}
		if strings.Contains(seg, `\`) {
			return "", false, pathSeparator
		}
		if why := segmentRefusal(dec, decParams); why != "" {
			return "", false, why
		}
		if !isASCII(dec) || !isASCII(decParams) {
			// The same rules for the compatibility forms.
			if why := segmentRefusal(norm.NFKC.String(dec), norm.NFKC.String(decParams)); why != "" {
				return "", false, why
			}
		}
		if dec == "" {
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

// segmentRefusal applies the rules of routingPath to one decoded segment
// and its decoded parameters.
func segmentRefusal(dec, decParams string) string {
	switch {
	case dotsOnly(dec):
		return pathDotSegment
	case strings.ContainsAny(dec, `/\;`) || strings.ContainsAny(decParams, `/\`):
		return pathSeparator
	case strings.ContainsAny(dec, "?#") || strings.ContainsAny(decParams, "?#"):
		return pathDelimiter
	case strings.ContainsFunc(dec, isControl) || strings.ContainsFunc(decParams, isControl):
		return pathControl
	case hasEscape(dec) || hasEscape(decParams):
		return pathDoubleEnc
	}
	return ""
}

// dotsOnly reports a segment of dots and spaces with at least one dot: "."
// and "..", and what backends on Windows make of "...", ".. " or ". ".
func dotsOnly(s string) bool {
	return strings.Contains(s, ".") && strings.Trim(s, ". ") == ""
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) }

func isASCII(s string) bool {
	for i := range len(s) {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
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

// plainPath reports a path that routingPath would return as it is:
// printable ASCII without a space, an escape, ';', '?', '#' or backslash,
// and no empty segment or one of dots only.
func plainPath(raw string) bool {
	segStart := 1
	for i := 1; i <= len(raw); i++ {
		if i < len(raw) {
			c := raw[i]
			if c <= ' ' || c >= 0x7f || c == '%' || c == ';' || c == '\\' || c == '?' || c == '#' {
				return false
			}
			if c != '/' {
				continue
			}
		}
		switch seg := raw[segStart:i]; {
		case seg == "":
			if i < len(raw) {
				return false // "//"; a trailing '/' is kept
			}
		case strings.Trim(seg, ".") == "":
			return false
		}
		segStart = i + 1
	}
	return true
}
