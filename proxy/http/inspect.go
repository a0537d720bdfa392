package httpproxy

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strings"
)

// SOAPVersion is 1.1 or 1.2; the two differ in content type, envelope
// namespace and fault format.
type SOAPVersion int

const (
	SOAP11 SOAPVersion = 11
	SOAP12 SOAPVersion = 12
)

// Envelope namespaces and the WS-Addressing namespaces whose Action header
// names the operation.
const (
	NSSOAP11   = "http://schemas.xmlsoap.org/soap/envelope/"
	NSSOAP12   = "http://www.w3.org/2003/05/soap-envelope"
	nsWSA      = "http://www.w3.org/2005/08/addressing"
	nsWSA2004  = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
	maxWSALen  = 2048
	xmlDeclTgt = "xml"
)

func (v SOAPVersion) namespace() string {
	if v == SOAP12 {
		return NSSOAP12
	}
	return NSSOAP11
}

// Rejection reasons. They are the values of the reason label of
// soap_rejections_total, so the set is closed.
const (
	ReasonMethod          = "method"
	ReasonContentType     = "content_type"
	ReasonVersionMismatch = "version_mismatch"
	ReasonTooLarge        = "too_large"
	ReasonDoctype         = "doctype"
	ReasonProcInst        = "processing_instruction"
	ReasonDepth           = "depth"
	ReasonElements        = "elements"
	ReasonAttrs           = "attributes"
	ReasonNameLen         = "name_length"
	ReasonTextLen         = "text_length"
	ReasonMalformed       = "malformed"
	ReasonNotEnvelope     = "not_envelope"
	ReasonNoBody          = "no_body"
	ReasonNoOperation     = "no_operation"
	ReasonBodyParts       = "body_parts"
	ReasonActionMissing   = "action_missing"
	ReasonActionMismatch  = "action_mismatch"
	ReasonNotAllowed      = "action_not_allowed"
	ReasonOperation       = "operation_mismatch"
	ReasonWSDL            = "wsdl"
)

// reasons lists every rejection reason, for the series created ahead of
// the first refusal.
var reasons = []string{
	ReasonMethod, ReasonContentType, ReasonVersionMismatch, ReasonTooLarge, ReasonDoctype, ReasonProcInst,
	ReasonDepth, ReasonElements, ReasonAttrs, ReasonNameLen, ReasonTextLen, ReasonMalformed, ReasonNotEnvelope,
	ReasonNoBody, ReasonNoOperation, ReasonBodyParts, ReasonActionMissing, ReasonActionMismatch,
	ReasonNotAllowed, ReasonOperation, ReasonWSDL,
}

// Rejection is why a SOAP request was refused. Reason is one of the Reason*
// constants; Detail is for the log only, never sent to the caller.
type Rejection struct {
	Reason string
	Detail string
}

// Error says the reason and, when there is one, the detail.
func (r *Rejection) Error() string {
	if r.Detail == "" {
		return "soap: " + r.Reason
	}
	return "soap: " + r.Reason + ": " + r.Detail
}

func reject(reason, format string, args ...any) *Rejection {
	return &Rejection{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

// Message is what inspection learnt about a SOAP message.
type Message struct {
	Version   SOAPVersion
	Operation xml.Name // first (and only) element of the Body
	WSAAction string   // WS-Addressing Action header, if any
}

// Inspect reads a whole SOAP message from r, checking it as it streams in
// against lim, and returns what it found together with the exact bytes read,
// which the caller forwards unchanged. It refuses any DOCTYPE (so neither
// external entities nor entity expansion can happen), processing
// instructions other than the XML declaration, non-UTF-8 encodings, an
// envelope of the other SOAP version, a Body with no or several operations,
// and anything over a limit. A refusal is a *Rejection.
func Inspect(r io.Reader, version SOAPVersion, lim XMLLimits) (Message, []byte, error) {
	var buf bytes.Buffer
	msg, err := inspect(io.TeeReader(r, &buf), version, lim)
	if err != nil {
		return Message{}, nil, err
	}
	return msg, buf.Bytes(), nil
}

// inspect is Inspect without keeping the bytes, for a caller that holds
// them already.
func inspect(r io.Reader, version SOAPVersion, lim XMLLimits) (Message, error) {
	lim = lim.withDefaults()
	lr := &limitedReader{r: r, left: lim.MaxBytes}
	d := xml.NewDecoder(lr)
	d.Strict = true
	// Without a CharsetReader the decoder refuses every declared encoding but
	// UTF-8, which is what we want: one encoding, no transcoding surprises.
	msg, err := inspectTokens(d, version, lim)
	if lr.over {
		return Message{}, reject(ReasonTooLarge, "body over %d bytes", lim.MaxBytes)
	}
	return msg, err
}

type limitedReader struct {
	r    io.Reader
	left int64
	over bool
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.left <= 0 {
		// One byte more tells "exactly at the limit" from "over it".
		var one [1]byte
		n, err := l.r.Read(one[:])
		if n > 0 {
			l.over = true
			return 0, errTooLarge
		}
		return 0, err
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	return n, err
}

var errTooLarge = errors.New("body too large")

// where says which part of the envelope the decoder is in.
type where int

const (
	inProlog where = iota
	inEnvelope
	inHeader
	inBody
	inEpilog
)

func inspectTokens(d *xml.Decoder, version SOAPVersion, lim XMLLimits) (Message, error) {
	msg := Message{Version: version}
	var (
		depth, elements int
		pos             = inProlog
		sawHeader       bool
		sawBody         bool
		bodyChildren    int
		inWSA           bool
		wsaCount        int
		first           = true
	)
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			if errors.Is(err, errTooLarge) {
				return msg, reject(ReasonTooLarge, "")
			}
			return msg, reject(ReasonMalformed, "%v", err)
		}
		isFirst := first
		first = false
		switch t := tok.(type) {
		case xml.Directive:
			return msg, reject(ReasonDoctype, "markup declaration")
		case xml.ProcInst:
			if t.Target != xmlDeclTgt || !isFirst {
				return msg, reject(ReasonProcInst, "target %.32q", t.Target)
			}
		case xml.Comment:
		case xml.CharData:
			if len(t) > lim.MaxTextLen {
				return msg, reject(ReasonTextLen, "%d bytes", len(t))
			}
			switch pos {
			case inProlog, inEpilog, inEnvelope:
				if len(bytes.TrimSpace(t)) > 0 {
					return msg, reject(ReasonMalformed, "text outside elements")
				}
			case inBody:
				if depth == 2 && len(bytes.TrimSpace(t)) > 0 {
					return msg, reject(ReasonMalformed, "text directly in Body")
				}
			}
			if inWSA {
				if len(msg.WSAAction)+len(t) > maxWSALen {
					return msg, reject(ReasonTextLen, "wsa:Action too long")
				}
				msg.WSAAction += string(t)
			}
		case xml.StartElement:
			depth++
			elements++
			if depth > lim.MaxDepth {
				return msg, reject(ReasonDepth, "over %d", lim.MaxDepth)
			}
			if elements > lim.MaxElements {
				return msg, reject(ReasonElements, "over %d", lim.MaxElements)
			}
			if len(t.Attr) > lim.MaxAttrs {
				return msg, reject(ReasonAttrs, "%d on one element", len(t.Attr))
			}
			if err := checkName(t.Name, lim); err != nil {
				return msg, err
			}
			for _, a := range t.Attr {
				if err := checkName(a.Name, lim); err != nil {
					return msg, err
				}
				if len(a.Value) > lim.MaxTextLen {
					return msg, reject(ReasonTextLen, "attribute value of %d bytes", len(a.Value))
				}
			}
			if inWSA {
				return msg, reject(ReasonMalformed, "element inside wsa:Action")
			}
			switch {
			case pos == inProlog:
				if t.Name.Local != "Envelope" {
					return msg, reject(ReasonNotEnvelope, "root element %.64q", t.Name.Local)
				}
				if t.Name.Space != version.namespace() {
					if t.Name.Space == NSSOAP11 || t.Name.Space == NSSOAP12 {
						return msg, reject(ReasonVersionMismatch, "envelope namespace %s", t.Name.Space)
					}
					return msg, reject(ReasonNotEnvelope, "envelope namespace %.128q", t.Name.Space)
				}
				pos = inEnvelope
			case pos == inEpilog:
				return msg, reject(ReasonMalformed, "second root element")
			case pos == inEnvelope:
				ns := version.namespace()
				switch {
				case t.Name.Space == ns && t.Name.Local == "Header" && !sawHeader && !sawBody:
					sawHeader = true
					pos = inHeader
				case t.Name.Space == ns && t.Name.Local == "Body" && !sawBody:
					sawBody = true
					pos = inBody
				default:
					return msg, reject(ReasonNotEnvelope, "unexpected %.64q in Envelope", t.Name.Local)
				}
			case pos == inHeader && depth == 3:
				if t.Name.Local == "Action" && (t.Name.Space == nsWSA || t.Name.Space == nsWSA2004) {
					wsaCount++
					if wsaCount > 1 {
						return msg, reject(ReasonActionMismatch, "several wsa:Action headers")
					}
					inWSA = true
				}
			case pos == inBody && depth == 3:
				bodyChildren++
				if bodyChildren > 1 {
					return msg, reject(ReasonBodyParts, "several elements in Body")
				}
				msg.Operation = t.Name
			}
		case xml.EndElement:
			depth--
			inWSA = false
			switch {
			case depth == 0:
				pos = inEpilog
			case depth == 1 && (pos == inHeader || pos == inBody):
				pos = inEnvelope
			}
		}
	}
	switch {
	case pos == inProlog:
		return msg, reject(ReasonNotEnvelope, "no root element")
	case pos != inEpilog:
		return msg, reject(ReasonMalformed, "unexpected end of document")
	case !sawBody:
		return msg, reject(ReasonNoBody, "")
	case bodyChildren == 0:
		return msg, reject(ReasonNoOperation, "")
	}
	msg.WSAAction = strings.TrimSpace(msg.WSAAction)
	return msg, nil
}

// checkName bounds a local name by MaxNameLen. Namespace URIs are
// attribute values (xmlns declarations) and are bounded like them, by
// MaxTextLen: real ones are often long.
func checkName(n xml.Name, lim XMLLimits) error {
	if len(n.Local) > lim.MaxNameLen {
		return reject(ReasonNameLen, "name of %d bytes", len(n.Local))
	}
	if len(n.Space) > lim.MaxTextLen {
		return reject(ReasonNameLen, "namespace of %d bytes", len(n.Space))
	}
	return nil
}

// operationOf returns the operation an action URI names: its last segment
// after '/', ':' or '#'. "urn:acme:GetOrder" and
// "http://tempuri.org/IOrders/GetOrder" both name GetOrder.
func operationOf(action string) string {
	if i := strings.LastIndexAny(action, "/:#"); i >= 0 {
		return action[i+1:]
	}
	return action
}
