package main

import (
	"fmt"
	"io"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs"
)

// printRefusals lists the last refused handshakes, newest first: when,
// where, from whom and why on one line, the refused certificate and the
// reason in full below it. Past the last certs.RefusalsKept come the last
// refusals of the results among them no more.
func printRefusals(w io.Writer, list []certs.Refusal) {
	if len(list) == 0 {
		return
	}
	fmt.Fprintf(w, "\nRefused handshakes (last %d, newest first)\n", min(len(list), certs.RefusalsKept))
	for i, r := range list {
		if i == certs.RefusalsKept {
			fmt.Fprintln(w, "  before them, the last refusal of each other result:")
		}
		who := string(r.Result)
		if r.Tenant != "" {
			who += ", tenant " + r.Tenant
		}
		fmt.Fprintf(w, "  %s  %s  %s  %s\n", r.Time.UTC().Format(time.DateTime+"Z"), r.Listener, r.Source, who)
		if r.FingerprintSHA256 != "" {
			fmt.Fprintf(w, "      certificate %s, issuer %s, SHA-256 %s\n", r.Subject, r.Issuer, r.FingerprintSHA256)
		}
		if r.Reason != "" {
			fmt.Fprintf(w, "      %s\n", r.Reason)
		}
	}
}
