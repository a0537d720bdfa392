package test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestBGPECMPRehash runs long-lived TLS sessions through BIRD's ECMP route
// to three gatehouse nodes (a tcp listener whose backend names the node and
// echoes; each session exchanges a byte every 50 ms) and new connections
// every 25 ms, then kills one node with kill -9 and, once it is back, drains
// another with SIGTERM. For each event it logs when the router's kernel
// route lost the node, when the last new connection was still sent to it,
// and the share of the surviving nodes' sessions that the rehash broke, for
// the README. It asserts only correctness: every session of the lost node
// ends, and every connection begun after the route changed lands on a
// surviving node and is served.
func TestBGPECMPRehash(t *testing.T) {
	bt := newBGPTopology(t, 3)
	for _, n := range bt.nodes {
		n.start(t, true)
	}
	bt.waitHops(t, "three ready nodes", 20*time.Second, bt.nodes...)

	var report []string
	for _, ev := range []struct {
		what string
		lost *bgpNode
		do   func(*bgpNode)
	}{
		{"kill -9", bt.nodes[0], func(n *bgpNode) { n.d.kill() }},
		{"SIGTERM (withdraw_wait 3s)", bt.nodes[2], func(n *bgpNode) { n.signal(t, syscall.SIGTERM) }},
	} {
		var survivors []*bgpNode
		for _, n := range bt.nodes {
			if n != ev.lost {
				survivors = append(survivors, n)
			}
		}
		fs := startFlows(t, 45, bt.dialTerm)
		if tl := fs.tally(); len(tl) != len(bt.nodes) {
			t.Fatalf("%s: 45 sessions reached only %v: ECMP did not spread them", ev.what, tl)
		}
		pr := bt.probe()
		at := time.Now()
		ev.do(ev.lost)
		fib := bt.waitHops(t, ev.what, 15*time.Second, survivors...)
		// The lost node's sessions end with its process at the latest.
		select {
		case <-ev.lost.d.exited:
		case <-time.After(15 * time.Second):
			t.Fatalf("%s: %s did not stop", ev.what, ev.lost.name)
		}
		fs.settled(t, time.Now(), 15*time.Second)
		probes := pr.stop()
		tl := fs.tally()
		fs.stop()

		if c := tl[ev.lost.name]; c == nil || c[0] != 0 {
			t.Errorf("%s: sessions of %s still alive after it stopped: %v", ev.what, ev.lost.name, tl)
		}
		var last time.Time // the last new connection sent to the lost node
		after := 0
		for _, p := range probes {
			if p.node == ev.lost.name || p.err != nil {
				if p.start.After(fib) {
					t.Errorf("%s: a connection begun %v after the route changed went to %q: %v",
						ev.what, p.start.Sub(fib).Round(time.Millisecond), p.node, p.err)
				}
				last = p.start
			}
			if p.start.After(fib) && p.err == nil {
				after++
			}
		}
		if after == 0 {
			t.Errorf("%s: no new connection was served after the route changed", ev.what)
		}
		total, broken := tl.survivors(ev.lost.name)
		var ended time.Duration // when the last of the lost node's sessions ended
		for _, f := range fs.flows {
			if f.node == ev.lost.name {
				f.mu.Lock()
				ended = max(ended, f.brokeAt.Sub(at))
				f.mu.Unlock()
			}
		}
		lastIn := "none"
		if !last.IsZero() {
			lastIn = last.Sub(at).Round(time.Millisecond).String()
		}
		report = append(report, fmt.Sprintf("%s of %s: route gone from the router's kernel after %v; last new connection to it begun after %s; its own sessions all ended after %v; "+
			"%d of %d sessions on the surviving nodes broke (%.0f%%) [%v]",
			ev.what, ev.lost.name, fib.Sub(at).Round(time.Millisecond), lastIn, ended.Round(time.Millisecond), broken, total,
			100*float64(broken)/float64(total), tl))

		// The lost node comes back for the next event.
		ev.lost.start(t, true)
		bt.waitHops(t, ev.lost.name+" back", 20*time.Second, bt.nodes...)
	}
	t.Logf("ECMP over three nodes, one leaves:\n  %s\n  %s", report[0], report[1])
}

// dialTerm opens a tenant session on the tcp listener of the service
// address from the client namespace.
func (bt *bgpTopology) dialTerm(ctx context.Context) (net.Conn, error) {
	c, err := bt.client.DialContext(ctx, "tcp", "", bgpVIP+":7000")
	if err != nil {
		return nil, err
	}
	tc := tls.Client(c, &tls.Config{RootCAs: bt.serverCA.Pool(), ServerName: "gate.example",
		Certificates: []tls.Certificate{bt.tenant.TLS}})
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return tc, nil
}

type probeResult struct {
	start time.Time
	node  string
	err   error
}

type prober struct {
	done chan struct{}
	wg   sync.WaitGroup
	out  []probeResult
}

// probe opens a new session every 25 ms until stop, and notes where each
// landed.
func (bt *bgpTopology) probe() *prober {
	p := &prober{done: make(chan struct{})}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			select {
			case <-p.done:
				return
			case <-time.After(25 * time.Millisecond):
			}
			r := probeResult{start: time.Now()}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			c, err := bt.dialTerm(ctx)
			cancel()
			if err == nil {
				r.node, err = readName(c)
				c.Close()
			}
			r.err = err
			p.out = append(p.out, r)
		}
	}()
	return p
}

func (p *prober) stop() []probeResult {
	close(p.done)
	p.wg.Wait()
	return p.out
}
