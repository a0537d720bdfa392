package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/internal/daemon"
)

// TestStatusListsRefusals: `gatehouse status` shows each refused handshake
// with its time, listener, source, result, tenant, the certificate's
// subject, issuer and fingerprint, and the reason; --json carries them as
// the daemon sent them.
func TestStatusListsRefusals(t *testing.T) {
	now := time.Date(2026, 11, 23, 16, 55, 1, 0, time.UTC)
	fp := strings.Repeat("ab", 32)
	st := daemon.Status{Generation: 3, Started: now.Add(-time.Hour), Refusals: []certs.Refusal{
		{Time: now, Listener: "web", Source: "203.0.113.9:51234", Result: certs.ResultRevoked, Tenant: "acme",
			Reason: "serial 5f2c (CN=svc) on CRL /etc/gatehouse/tenants/acme/ca.crl", Subject: "CN=svc,O=acme", Issuer: "CN=acme issuing CA", FingerprintSHA256: fp},
		{Time: now.Add(-time.Minute), Listener: "mainframe", Source: "[2001:db8::7]:40000", Result: certs.ResultNoCert, Reason: "tls: client didn't provide a certificate"},
	}}
	raw, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var back daemon.Status
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := printStatus(&out, &back, now); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	for _, want := range []string{
		"Refused handshakes (last 2, newest first)",
		"  2026-11-23 16:55:01Z  web  203.0.113.9:51234  revoked, tenant acme\n",
		"      certificate CN=svc,O=acme, issuer CN=acme issuing CA, SHA-256 " + fp + "\n",
		"      serial 5f2c (CN=svc) on CRL /etc/gatehouse/tenants/acme/ca.crl\n",
		"  2026-11-23 16:54:01Z  mainframe  [2001:db8::7]:40000  no_cert\n      tls: client didn't provide a certificate\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("status output lacks %q:\n%s", want, text)
		}
	}
}

// TestStatusListsLastOfEachResult: past the ring's refusals, the last one
// of each result pushed out of it is listed under its own line.
func TestStatusListsLastOfEachResult(t *testing.T) {
	now := time.Date(2026, 11, 23, 16, 55, 1, 0, time.UTC)
	var list []certs.Refusal
	for i := range certs.RefusalsKept {
		list = append(list, certs.Refusal{Time: now.Add(-time.Duration(i) * time.Second), Listener: "web", Source: "192.0.2.1:1", Result: certs.ResultNoCert})
	}
	list = append(list, certs.Refusal{Time: now.Add(-time.Hour), Listener: "web", Source: "192.0.2.2:2", Result: certs.ResultRevoked, Tenant: "acme"})
	var out bytes.Buffer
	printRefusals(&out, list)
	text := out.String()
	want := "Refused handshakes (last 32, newest first)\n"
	if !strings.Contains(text, want) {
		t.Errorf("status output lacks %q:\n%s", want, text)
	}
	before, after, ok := strings.Cut(text, "  before them, the last refusal of each other result:\n")
	if !ok || strings.Count(before, "no_cert") != certs.RefusalsKept || after != "  2026-11-23 15:55:01Z  web  192.0.2.2:2  revoked, tenant acme\n" {
		t.Errorf("status output:\n%s", text)
	}
}
