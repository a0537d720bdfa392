package httpproxy

import (
	"net/http"
	"net/http/httputil"
	"slices"
	"strings"
)

// identityHeaders are names backends trust for who is calling or which URL
// was asked for. Whatever the client sent under these names, under any
// X-Forwarded-* name, or under look-alikes a backend could fold into them
// (underscores, any case), is dropped before ours are set.
var identityHeaders = []string{
	"forwarded", "x-real-ip", "true-client-ip", "x-client-ip", "x-cluster-client-ip",
	"x-original-forwarded-for", "x-original-url", "x-rewrite-url",
}

// isIdentityHeader runs on every header field of every request, so it
// compares in place (any case, '_' as '-') rather than building a folded
// copy of the name.
func isIdentityHeader(name string) bool {
	return slices.ContainsFunc(identityHeaders, func(id string) bool { return len(name) == len(id) && foldedPrefix(name, id) }) ||
		foldedPrefix(name, "x-forwarded-") || foldedPrefix(name, "x-gatehouse-") || foldedPrefix(name, "x-client-cert")
}

// foldedPrefix reports whether name starts with prefix, a lower-case name
// with '-', when name is read in lower case with '_' as '-'.
func foldedPrefix(name, prefix string) bool {
	if len(name) < len(prefix) {
		return false
	}
	for i := range len(prefix) {
		c := name[i]
		switch {
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		case c == '_':
			c = '-'
		}
		if c != prefix[i] {
			return false
		}
	}
	return true
}

func (rt *route) rewrite(pr *httputil.ProxyRequest) {
	st, _ := pr.In.Context().Value(stateKey{}).(*requestState)
	// ReverseProxy re-encodes a query holding ';' or a bad escape, in
	// case the proxy reads it one way and the backend another. gatehouse
	// routes without the query and reads it only for SOAP metadata
	// requests (splitting at ';' as well as '&'), so it goes on as sent.
	pr.Out.URL.RawQuery = pr.In.URL.RawQuery
	if st != nil && len(rt.backends) > 1 {
		st.inURL = *pr.Out.URL
	}
	pr.SetURL(rt.backends[0].url)
	for name := range pr.Out.Header {
		if isIdentityHeader(name) {
			delete(pr.Out.Header, name)
		}
	}
	if st == nil {
		return // unreachable: serve always sets it; send no identity rather than a wrong one
	}
	// Request trailers are not forwarded: their values arrive after the
	// head, past every check made on it.
	pr.Out.Trailer = nil
	hdr := pr.Out.Header
	hdr.Set("X-Forwarded-For", st.peer.Source.Addr().Unmap().String())
	hdr.Set("X-Forwarded-Proto", "https")
	if pr.In.Host != "" {
		hdr.Set("X-Forwarded-Host", headerSafe(pr.In.Host))
	}
	hdr.Set("X-Gatehouse-Tenant", st.peer.Tenant)
	hdr.Set("X-Gatehouse-Environment", st.peer.Env().Environment)
	hdr.Set("X-Client-Cert-Fingerprint", st.peer.FingerprintSHA256)
	hdr.Set("X-Client-Cert-Subject", headerSafe(st.peer.Subject))
	// The access log's id, so the backend's logs can be matched with ours.
	hdr.Set("X-Gatehouse-Request-Id", st.id)
}

// badConnection is the refusal of a Connection header that names a field.
const badConnection = "bad request: Connection header names a header field"

// connectionOptions are the Connection options a request may carry.
// ReverseProxy removes every field a Connection option names (RFC 9110
// 7.6.1) after gatehouse checked the request, so "Connection: SOAPAction,
// Content-Type" would take from the backend the very fields the SOAP rules
// judged, and another name a field the backend relies on. close and
// keep-alive name no field; te names a hop-by-hop field the proxy drops
// anyway (libwww-perl sends it); upgrade is judged with the upgrade rules.
var connectionOptions = []string{"close", "keep-alive", "te", "upgrade"}

// connectionOptionsOK reports whether h's Connection header holds only
// connectionOptions.
func connectionOptionsOK(h http.Header) bool {
	for _, v := range h.Values("Connection") {
		for opt := range strings.SplitSeq(v, ",") {
			if opt = strings.TrimSpace(opt); opt != "" && !slices.ContainsFunc(connectionOptions, func(o string) bool {
				return strings.EqualFold(o, opt)
			}) {
				return false
			}
		}
	}
	return true
}

// headerSafe keeps printable ASCII; anything else becomes '?', so a
// certificate subject can never break the header block.
func headerSafe(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return '?'
		}
		return r
	}, s)
}

// validHeaderName reports a name of letters, digits and '-' only. Other
// names are legal HTTP, but CGI-style backends fold '_' (and some '.') into
// '-', so "X_Gatehouse_Tenant" could stand in for a header the proxy sets;
// like nginx, gatehouse drops them.
func validHeaderName(name string) bool {
	for i := range len(name) {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return name != ""
}

// dropHeaders removes the request's header fields whose names are not
// letters, digits and '-', and says so at debug level.
func (h *Handler) dropHeaders(r *http.Request, st *requestState) {
	var dropped []string
	for name := range r.Header {
		if !validHeaderName(name) {
			delete(r.Header, name)
			dropped = append(dropped, name)
		}
	}
	if len(dropped) == 0 {
		return
	}
	slices.Sort(dropped)
	const show = 8
	names := dropped[:min(len(dropped), show)]
	for i, n := range names {
		names[i] = headerSafe(n[:min(len(n), 64)])
	}
	h.logger.Debug("request header fields dropped: names with characters other than letters, digits and '-'",
		"listener", h.listener, "tenant", st.peer.Tenant, "id", st.id, "count", len(dropped), "names", names)
}

// headSize is the size of r's request line and header fields as HTTP/1.1
// writes them, whichever protocol carried them.
func headSize(r *http.Request) int {
	n := len(r.Method) + 1 + len(r.RequestURI) + len(" HTTP/1.1\r\n") + len("Host: \r\n") + len(r.Host) + 2
	for name, values := range r.Header {
		for _, v := range values {
			n += len(name) + 2 + len(v) + 2
		}
	}
	return n
}
