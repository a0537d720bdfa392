package main

import (
	"fmt"
	"io"
	"time"

	"github.com/gatehouse-dmz/gatehouse/fleet"
)

// printFleet shows the fleet: the blocks this node served, and each
// peer's reach, last pull and the blocks received from it.
func printFleet(w io.Writer, f *fleet.Status, now time.Time) {
	if f == nil {
		return
	}
	served := "not pulled by a peer yet"
	if !f.LastServed.IsZero() {
		served = fmt.Sprintf("%d blocks at the last pull, %s ago", f.Served, ago(now, f.LastServed))
	}
	fmt.Fprintf(w, "\nFleet\tpeer\tlast pull\treceived (holding)\n")
	fmt.Fprintf(w, "  served\t%s\n", served)
	for _, p := range f.Peers {
		state, last := "down", "never"
		if p.Up {
			state = "up"
		}
		if !p.LastPull.IsZero() {
			last = ago(now, p.LastPull) + " ago, " + p.Result
			if p.Error != "" && p.Result != fleet.ResultOK {
				last += ": " + p.Error
			}
		}
		fmt.Fprintf(w, "  \t%s %s\t%s\t%d (%d)\n", p.Peer, state, last, p.Received, p.Holding)
	}
}

func ago(now, t time.Time) string {
	return max(now.Sub(t), 0).Round(100 * time.Millisecond).String()
}
