package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/gatehouse-dmz/gatehouse/internal/daemon"
)

// printListeners prints routes grouped by listener, the same way for check
// (the configuration) and status (the generation in force). extra, when
// set, gives a last column per route; without it a route with several
// backends lists the others there.
func printListeners(w io.Writer, routes []daemon.ListenerRoute, extra func(i int) string) {
	last := ""
	for i, r := range routes {
		if r.Listener != last {
			start := ""
			if r.StartTLS {
				start = ", START_TLS"
			}
			fmt.Fprintf(w, "  %s\t%s\t%s%s\n", r.Listener, r.Listen, r.Protocol, start)
			last = r.Listener
		}
		match := r.Tenant
		if r.Environment != "" {
			match += "/" + r.Environment
		}
		if r.Host != "" {
			match += " host " + r.Host
		}
		if r.Path != "" {
			match += " path " + r.Path
		}
		var first, more string
		if len(r.Backends) > 0 {
			first = r.Backends[0]
		}
		if extra != nil {
			more = extra(i)
		} else if len(r.Backends) > 1 {
			more = "also " + strings.Join(r.Backends[1:], " ")
		}
		fmt.Fprintf(w, "    → %s\t%s\t%s\n", match, first, more)
	}
}
