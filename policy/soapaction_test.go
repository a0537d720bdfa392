package policy

import (
	"errors"
	"testing"
)

func TestParseSOAPAction(t *testing.T) {
	tests := []struct {
		entry string
		want  SOAPAction
		ok    bool
	}{
		{"urn:acme:GetOrder", SOAPAction{Action: "urn:acme:GetOrder"}, true},
		{"http://tempuri.org/IOrders/GetOrder", SOAPAction{Action: "http://tempuri.org/IOrders/GetOrder"}, true},
		{"GetOrder", SOAPAction{Action: "GetOrder"}, true},
		{"urn:getOrder {http://service.acme.example}getOrder", SOAPAction{Action: "urn:getOrder", Namespace: "http://service.acme.example", Name: "getOrder"}, true},
		{"urn:x {}Unqualified", SOAPAction{Action: "urn:x", Name: "Unqualified"}, true},
		{"", SOAPAction{}, false},
		{"urn:acme:", SOAPAction{}, false},
		{"http://tempuri.org/", SOAPAction{}, false},
		{`"urn:acme:GetOrder"`, SOAPAction{}, false},
		{"urn:a b", SOAPAction{}, false},
		{"urn:a {urn:b}", SOAPAction{}, false},
		{"urn:a {urn:b", SOAPAction{}, false},
		{"urn:a urn:b}c", SOAPAction{}, false},
		{"urn:a {urn:b}c:d", SOAPAction{}, false},
		{"urn:a {urn:b}c d", SOAPAction{}, false},
		{"urn:a\t{urn:b}c", SOAPAction{}, false},
		{"urn:a  {urn:b}c", SOAPAction{}, false},
	}
	for _, tc := range tests {
		got, err := ParseSOAPAction(tc.entry)
		if (err == nil) != tc.ok || got != tc.want || (err != nil && !errors.Is(err, ErrSOAPAction)) {
			t.Errorf("ParseSOAPAction(%q) = %+v, %v; want %+v, ok %v", tc.entry, got, err, tc.want, tc.ok)
		}
	}
}
