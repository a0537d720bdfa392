package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/gatehouse-dmz/gatehouse/internal/daemon"
)

// printBGP shows the speaker: each neighbour's session, and which service
// addresses are announced or withdrawn.
func printBGP(w io.Writer, b *daemon.BGPStatus) {
	if b == nil {
		return
	}
	fmt.Fprintf(w, "\nBGP (AS %d)\tneighbor\tsession\n", b.LocalAS)
	for _, s := range b.Sessions {
		up := "down"
		if s.Up {
			up = "up"
		}
		fmt.Fprintf(w, "  \t%s (AS %d)\t%s (%s)\n", s.Neighbor, s.AS, up, s.State)
	}
	if len(b.Announced) > 0 {
		fmt.Fprintf(w, "  announced\t%s\n", strings.Join(b.Announced, ", "))
	}
	if len(b.Withdrawn) > 0 {
		fmt.Fprintf(w, "  withdrawn\t%s\n", strings.Join(b.Withdrawn, ", "))
	}
}
