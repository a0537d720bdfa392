package httpproxy_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"testing/iotest"

	httpproxy "github.com/gatehouse-dmz/gatehouse/proxy/http"
)

func TestInspect(t *testing.T) {
	tests := []struct {
		name    string
		doc     string
		version httpproxy.SOAPVersion
		op      string
		wsa     string
		reason  string
	}{
		{"1.1 operation", string(fixture(t, "soap11-getorder.xml")), httpproxy.SOAP11, "GetOrder", "", ""},
		{"1.2 wsa action", string(fixture(t, "soap12-wsa-putorder.xml")), httpproxy.SOAP12, "PutOrder", "urn:acme:PutOrder", ""},
		{"comments allowed", "<!-- hi --><soap:Envelope xmlns:soap=\"" + httpproxy.NSSOAP11 + "\"><soap:Body><!-- x --><Op/></soap:Body></soap:Envelope><!-- end -->", httpproxy.SOAP11, "Op", "", ""},
		{"doctype without entities", "<!DOCTYPE x><x/>", httpproxy.SOAP11, "", "", httpproxy.ReasonDoctype},
		{"not an envelope", "<Envelope><Body><Op/></Body></Envelope>", httpproxy.SOAP11, "", "", httpproxy.ReasonNotEnvelope},
		{"no body", "<e:Envelope xmlns:e=\"" + httpproxy.NSSOAP11 + "\"><e:Header/></e:Envelope>", httpproxy.SOAP11, "", "", httpproxy.ReasonNoBody},
		{"empty body", "<e:Envelope xmlns:e=\"" + httpproxy.NSSOAP11 + "\"><e:Body> </e:Body></e:Envelope>", httpproxy.SOAP11, "", "", httpproxy.ReasonNoOperation},
		{"header after body", "<e:Envelope xmlns:e=\"" + httpproxy.NSSOAP11 + "\"><e:Body><Op/></e:Body><e:Header/></e:Envelope>", httpproxy.SOAP11, "", "", httpproxy.ReasonNotEnvelope},
		{"two bodies", "<e:Envelope xmlns:e=\"" + httpproxy.NSSOAP11 + "\"><e:Body><Op/></e:Body><e:Body><Op2/></e:Body></e:Envelope>", httpproxy.SOAP11, "", "", httpproxy.ReasonNotEnvelope},
		{"second root", "<e:Envelope xmlns:e=\"" + httpproxy.NSSOAP11 + "\"><e:Body><Op/></e:Body></e:Envelope><e:Envelope/>", httpproxy.SOAP11, "", "", httpproxy.ReasonMalformed},
		{"text in body", "<e:Envelope xmlns:e=\"" + httpproxy.NSSOAP11 + "\"><e:Body>Op<Op/></e:Body></e:Envelope>", httpproxy.SOAP11, "", "", httpproxy.ReasonMalformed},
		{"unclosed", "<e:Envelope xmlns:e=\"" + httpproxy.NSSOAP11 + "\"><e:Body><Op/>", httpproxy.SOAP11, "", "", httpproxy.ReasonMalformed},
		{"undeclared entity", "<e:Envelope xmlns:e=\"" + httpproxy.NSSOAP11 + "\"><e:Body><Op>&boom;</Op></e:Body></e:Envelope>", httpproxy.SOAP11, "", "", httpproxy.ReasonMalformed},
		{"two wsa actions", "<e:Envelope xmlns:e=\"" + httpproxy.NSSOAP12 + "\" xmlns:a=\"http://www.w3.org/2005/08/addressing\"><e:Header><a:Action>x</a:Action><a:Action>y</a:Action></e:Header><e:Body><Op/></e:Body></e:Envelope>", httpproxy.SOAP12, "", "", httpproxy.ReasonActionMismatch},
		{"element in wsa action", "<e:Envelope xmlns:e=\"" + httpproxy.NSSOAP12 + "\" xmlns:a=\"http://www.w3.org/2005/08/addressing\"><e:Header><a:Action><x/></a:Action></e:Header><e:Body><Op/></e:Body></e:Envelope>", httpproxy.SOAP12, "", "", httpproxy.ReasonMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			msg, raw, err := httpproxy.Inspect(strings.NewReader(tc.doc), tc.version, testXMLLimits)
			if tc.reason != "" {
				var rej *httpproxy.Rejection
				if !errors.As(err, &rej) || rej.Reason != tc.reason {
					t.Fatalf("got %v, want rejection %q", err, tc.reason)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if msg.Operation.Local != tc.op || msg.WSAAction != tc.wsa || string(raw) != tc.doc {
				t.Errorf("op %q wsa %q raw equal %v", msg.Operation.Local, msg.WSAAction, string(raw) == tc.doc)
			}
		})
	}
}

// FuzzInspect checks that the inspector never panics, that what it accepts
// is passed on byte for byte, and that its verdict does not depend on how
// the body arrives (whole or one byte at a time).
func FuzzInspect(f *testing.F) {
	for _, name := range []string{"soap11-getorder.xml", "soap12-getorder.xml", "soap12-wsa-putorder.xml",
		"soap11-deleteorder.xml", "billion-laughs.xml", "xxe.xml", "two-operations.xml"} {
		b, err := readFixture(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, true)
		f.Add(b, false)
	}
	f.Add(nested(40), true)
	f.Fuzz(func(t *testing.T, doc []byte, v11 bool) {
		v := httpproxy.SOAP12
		if v11 {
			v = httpproxy.SOAP11
		}
		msg, raw, err := httpproxy.Inspect(bytes.NewReader(doc), v, testXMLLimits)
		msg2, _, err2 := httpproxy.Inspect(iotest.OneByteReader(bytes.NewReader(doc)), v, testXMLLimits)
		if (err == nil) != (err2 == nil) || msg != msg2 {
			t.Fatalf("verdict depends on chunking: %v / %v", err, err2)
		}
		if err != nil {
			var rej *httpproxy.Rejection
			if !errors.As(err, &rej) {
				t.Fatalf("error is not a Rejection: %v", err)
			}
			return
		}
		if !bytes.Equal(raw, doc) {
			t.Fatal("accepted bytes differ from the input")
		}
		if msg.Operation.Local == "" {
			t.Fatal("accepted a message without an operation")
		}
		if bytes.Contains(doc, []byte("<!DOCTYPE")) && !bytes.Contains(doc, []byte("<!--")) && !bytes.Contains(doc, []byte("CDATA")) {
			t.Fatal("accepted a DOCTYPE")
		}
	})
}
