package httpproxy

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// SOAP media types.
const (
	mediaSOAP11 = "text/xml"
	mediaSOAP12 = "application/soap+xml"
)

// checkSOAP applies the SOAP rules to a routed request. It returns true when
// the request may go on to the backend, with its body replaced by the exact
// bytes inspected; otherwise it has answered with a SOAP Fault.
func (h *Handler) checkSOAP(w http.ResponseWriter, r *http.Request, rt *route, st *requestState) bool {
	version := SOAP11
	mt, params, ctErr := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if ctErr == nil && mt == mediaSOAP12 {
		version = SOAP12
	}
	fail := func(rej *Rejection) bool {
		h.soapFault(w, r, version, st, rej)
		return false
	}
	if isMetadataQuery(r.URL.RawQuery) {
		switch {
		case !rt.allowWSDL:
			return fail(reject(ReasonWSDL, "metadata query"))
		case r.Method != http.MethodGet && r.Method != http.MethodHead:
			return fail(reject(ReasonMethod, "%.16q for metadata", r.Method))
		case !metadataOnly(r.URL.RawQuery):
			return fail(reject(ReasonWSDL, "metadata query with other parameters"))
		case r.ContentLength != 0 || len(r.TransferEncoding) != 0:
			// Nothing inspects it, and nothing would buffer it.
			return fail(reject(ReasonWSDL, "metadata request with a body"))
		}
		return true
	}
	if r.Method != http.MethodPost {
		return fail(reject(ReasonMethod, "%.16q", r.Method))
	}
	if ctErr != nil || (mt != mediaSOAP11 && mt != mediaSOAP12) {
		return fail(reject(ReasonContentType, "%.64q", r.Header.Get("Content-Type")))
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") && !strings.EqualFold(cs, "us-ascii") {
		return fail(reject(ReasonContentType, "charset %.32q", cs))
	}
	if r.Body == nil || r.Body == http.NoBody {
		return fail(reject(ReasonNotEnvelope, "no body"))
	}
	// The envelope is inspected as it streams in, and what is read is
	// kept (in the listener's body budget) to go on: the bytes inspected
	// are the bytes forwarded, and nothing holds a second copy. It must
	// arrive within body_buffer_timeout.
	body := &bufferedBody{budget: h.budget()}
	st.buffered = body // closed when the request ends, whoever ends it
	done := st.wholeBy()
	msg, err := inspect(io.TeeReader(r.Body, body), version, XMLLimits{})
	done()
	var mbe *http.MaxBytesError
	switch berr := st.bodyError(); {
	case body.full:
		refuseBody(w, errBodyBudget)
		return false
	case errors.As(berr, &mbe):
		return fail(reject(ReasonTooLarge, "body over %d bytes", mbe.Limit))
	case berr != nil:
		refuseBody(w, berr) // stalled, too slow or cut off: not the envelope's fault
		return false
	case err != nil:
		var rej *Rejection
		if !errors.As(err, &rej) {
			rej = reject(ReasonMalformed, "%v", err)
		}
		return fail(rej)
	}

	var transport string
	switch version {
	case SOAP11:
		vals := r.Header.Values("SOAPAction")
		if len(vals) > 1 {
			return fail(reject(ReasonActionMismatch, "several SOAPAction headers"))
		}
		if len(vals) == 1 {
			transport = unquote(vals[0])
		}
	case SOAP12:
		transport = params["action"]
	}
	action := transport
	if msg.WSAAction != "" {
		if transport != "" && transport != msg.WSAAction {
			return fail(reject(ReasonActionMismatch, "transport action and wsa:Action differ"))
		}
		action = msg.WSAAction
	}
	allowed := rt.actions[action]
	switch {
	case action == "":
		return fail(reject(ReasonActionMissing, ""))
	case allowed == nil:
		return fail(reject(ReasonNotAllowed, "%.256q", action))
	case !allowed.names(action, msg.Operation):
		return fail(reject(ReasonOperation, "action %.256q, body {%.256s}%.128s", action, msg.Operation.Space, msg.Operation.Local))
	}
	body.forward()
	r.Body = body
	r.ContentLength = body.n
	r.TransferEncoding = nil
	r.Header.Del("Expect") // the whole body is here: see bufferBody
	return true
}

// isMetadataQuery reports a query that asks for a WSDL or schema (?wsdl,
// ?xsd=…, ?singleWsdl) in any parameter, whatever the case, and whether the
// backend separates parameters with '&' or ';'. It decides what is refused
// as a metadata request; metadataOnly decides what is let through as one.
func isMetadataQuery(raw string) bool {
	for kv := range strings.FieldsFuncSeq(raw, func(r rune) bool { return r == '&' || r == ';' }) {
		k, _, _ := strings.Cut(kv, "=")
		if uk, err := url.QueryUnescape(k); err == nil {
			k = uk
		}
		if isMetadataKey(strings.TrimSpace(k)) {
			return true
		}
	}
	return false
}

func isMetadataKey(k string) bool {
	switch strings.ToLower(k) {
	case "wsdl", "xsd", "singlewsdl":
		return true
	}
	return false
}

// metadataOnly reports a query made of metadata parameters only, each with
// no value or a file name (?wsdl, ?wsdl=part2.wsdl, ?xsd=xsd0, ?singleWsdl),
// read the way every backend reads it: no ';' (which some take for '&'),
// no empty parameter, and no value that could name a path ("../conf",
// "%2e%2e%2f", the Axis2 ?xsd= traversal). Anything else beside ?wsdl
// would reach the backend uninspected, as a GET.
func metadataOnly(raw string) bool {
	if strings.Contains(raw, ";") {
		return false
	}
	for kv := range strings.SplitSeq(raw, "&") {
		k, v, _ := strings.Cut(kv, "=")
		k, kerr := url.QueryUnescape(k)
		v, verr := url.QueryUnescape(v)
		if kerr != nil || verr != nil || !isMetadataKey(k) || strings.Contains(v, "..") ||
			strings.ContainsFunc(v, func(r rune) bool {
				return !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '.' || r == '_' || r == '-')
			}) {
			return false
		}
	}
	return true
}

// allowedAction is what one action of a route's allow-list lets through:
// the Body elements its entries name, and, when an entry names none, the
// operation the action itself names (actionNames).
type allowedAction struct {
	derived  bool
	elements []xml.Name
}

func (a *allowedAction) names(action string, op xml.Name) bool {
	return slices.Contains(a.elements, op) || a.derived && actionNames(action, op)
}

// actionNames reports whether action names the operation op, namespace and
// local name, by the conventions SOAP stacks derive actions with: the
// namespace and then the name ("urn:acme:GetOrder" for {urn:acme}GetOrder,
// "http://tempuri.org/GetOrder" for {http://tempuri.org/}GetOrder), or
// WCF's namespace, contract and name ("http://tempuri.org/IOrders/GetOrder").
// The local name alone is not enough: a backend that dispatches on the
// Body element would run {urn:admin}GetOrder for an action allowed as
// urn:acme:GetOrder.
func actionNames(action string, op xml.Name) bool {
	local := operationOf(action)
	if local == "" || local != op.Local {
		return false
	}
	rest := strings.TrimRight(action[:len(action)-len(local)], "/:#")
	ns := strings.TrimRight(op.Space, "/:#")
	if rest == ns {
		return true
	}
	i := strings.LastIndexByte(rest, '/')
	return ns != "" && i >= 0 && strings.TrimRight(rest[:i], "/") == ns && !strings.ContainsAny(rest[i+1:], ":#")
}

func unquote(s string) string {
	s = strings.TrimSpace(s)
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		s = s[1 : len(s)-1]
	}
	return s
}

// soapFault answers a refused SOAP request with a Fault of the caller's
// version: 1.1 soap:Client with HTTP 500, 1.2 env:Sender with HTTP 400. The
// correlation id is in the Fault, a response header and the log; the detail
// of the refusal stays in the log.
func (h *Handler) soapFault(w http.ResponseWriter, r *http.Request, v SOAPVersion, st *requestState, rej *Rejection) {
	if h.metrics != nil {
		h.metrics.rejected(st.peer.Tenant, rej.Reason)
	}
	h.logger.Info("soap request refused", "listener", h.listener, "tenant", st.peer.Tenant,
		"id", st.id, "reason", rej.Reason, "detail", rej.Detail)
	noteReason(w, "soap: "+rej.Reason)
	var b bytes.Buffer
	b.WriteString(xml.Header)
	text := "request refused: " + rej.Reason
	if v == SOAP12 {
		fmt.Fprintf(&b, `<env:Envelope xmlns:env="%s"><env:Body><env:Fault>`+
			`<env:Code><env:Value>env:Sender</env:Value></env:Code>`+
			`<env:Reason><env:Text xml:lang="en">%s</env:Text></env:Reason>`+
			`<env:Detail><gh:correlationId xmlns:gh="urn:gatehouse">%s</gh:correlationId></env:Detail>`+
			`</env:Fault></env:Body></env:Envelope>`, NSSOAP12, escape(text), escape(st.id))
		w.Header().Set("Content-Type", mediaSOAP12+"; charset=utf-8")
	} else {
		fmt.Fprintf(&b, `<soap:Envelope xmlns:soap="%s"><soap:Body><soap:Fault>`+
			`<faultcode>soap:Client</faultcode><faultstring>%s</faultstring>`+
			`<detail><gh:correlationId xmlns:gh="urn:gatehouse">%s</gh:correlationId></detail>`+
			`</soap:Fault></soap:Body></soap:Envelope>`, NSSOAP11, escape(text), escape(st.id))
		w.Header().Set("Content-Type", mediaSOAP11+"; charset=utf-8")
	}
	w.Header().Set("X-Correlation-Id", st.id)
	w.Header().Set("Cache-Control", "no-store")
	code := http.StatusInternalServerError
	if v == SOAP12 {
		code = http.StatusBadRequest
	}
	w.WriteHeader(code)
	w.Write(b.Bytes())
}

func escape(s string) string {
	var b strings.Builder
	xml.EscapeText(&b, []byte(s))
	return b.String()
}
