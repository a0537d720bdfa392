package main

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// runHASteps shows the fleet with real clients: requests spread over the
// nodes, the intruder refused by every node, a node killed and another
// drained while a curl loop goes on.
func (d *demo) runHASteps(ctx context.Context) {
	d.section("Three active nodes behind BGP ECMP (real clients, real BIRD, real kernel filters)")
	steps := []struct {
		name string
		fn   func(context.Context) (string, error)
	}{
		{"tenant requests from the cloud spread over the nodes, each on a new connection", d.stepHASpread},
		{"the intruder gets nothing from the service address or any node: XDP drops it on each", d.stepHAIntruder},
		{"kill -9 of n1: the router drops its route with its BGP session, the curl loop goes on", d.stepHAKill},
		{"SIGTERM to n2: withdrawn first, not ready, still serving during withdraw_wait, then drained; the curl loop goes on", d.stepHADrain},
		{"`gatehouse status` on n3 shows its BGP session up and the service address announced", d.stepHAStatus},
	}
	for _, s := range steps {
		if ctx.Err() != nil {
			return
		}
		detail, err := s.fn(ctx)
		if err != nil {
			d.fail(s.name, err)
			continue
		}
		d.ok("%s\n      %s", s.name, strings.ReplaceAll(strings.TrimSpace(detail), "\n", "\n      "))
	}
}

var haNodeRE = regexp.MustCompile(`node=(n\d)`)

// haGet is one tenant request from the cloud to url on a new connection;
// it returns the node that served it.
func (d *demo) haGet(ctx context.Context, extra ...string) (string, error) {
	args := append([]string{"-4", "--max-time", "2"}, d.tenantTLS()...)
	args = append(args, extra...)
	out, code := d.curl(ctx, "cloud", append(args, "https://"+gateName+"/orders/7")...)
	if code != 0 {
		return "", fmt.Errorf("curl exit %d: %s", code, strings.TrimSpace(out))
	}
	m := haNodeRE.FindStringSubmatch(out)
	if m == nil || !strings.Contains(out, "tenant="+tenant) {
		return "", fmt.Errorf("unexpected answer: %s", strings.TrimSpace(out))
	}
	return m[1], nil
}

func (d *demo) stepHASpread(ctx context.Context) (string, error) {
	seen := map[string]int{}
	for range 24 {
		// The first connections follow a route the router has just
		// installed; a SYN lost to its first neighbour resolution is sent
		// again after 1 s and 3 s, so these wait 6 s rather than 2.
		node, err := d.haGet(ctx, "--max-time", "6")
		if err != nil {
			return "", err
		}
		seen[node]++
	}
	if len(seen) < 2 {
		return "", fmt.Errorf("24 connections all reached %v", seen)
	}
	return fmt.Sprintf("24 × curl --cert acme-cloud.pem https://%s/ (%s): served by %s", gateName, haVIP, tallyString(seen)), nil
}

func (d *demo) stepHAIntruder(ctx context.Context) (string, error) {
	before := d.haXDPDrops(ctx)
	targets := []string{haVIP + ":443"}
	for _, n := range d.haNodes {
		targets = append(targets, n.addr+":443")
	}
	out, err := d.cmd(ctx, "intruder", selfExe(), append([]string{subProbe, "1s"}, targets...)...)
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if !strings.HasSuffix(l, " dropped") {
			return "", fmt.Errorf("the intruder's connection was not dropped: %s", l)
		}
	}
	var after float64
	if !waitUntil(ctx, 5*time.Second, func() bool { after = d.haXDPDrops(ctx); return after >= before+float64(len(targets)) }) {
		return "", fmt.Errorf("XDP not_admitted drops on the nodes went %v → %v, want +%d", before, after, len(targets))
	}
	return fmt.Sprintf("from %s: %s\nXDP drops (not admitted) on n1+n2+n3: %v → %v", intruderV4,
		strings.ReplaceAll(strings.TrimSpace(out), "\n", ", "), before, after), nil
}

// haXDPDrops sums the not-admitted XDP drops of the running nodes.
func (d *demo) haXDPDrops(ctx context.Context) float64 {
	var sum float64
	for _, n := range d.haNodes {
		select {
		case <-n.exited:
			continue
		default:
		}
		sum += max(d.metricAt(ctx, n.name, haMetrics, xdpNotAdmitted), 0)
	}
	return sum
}

func (d *demo) stepHAKill(ctx context.Context) (string, error) {
	n1 := d.haNodes[0]
	return d.failover(ctx, n1, func() error { return n1.cmd.Process.Kill() }, func(context.Context) (string, error) {
		<-n1.exited
		// The process is gone; its kernel filters are not.
		if _, err := d.cmd(ctx, n1.name, "nft", "list", "table", "inet", "gatehouse"); err != nil {
			return "", fmt.Errorf("n1's table inet gatehouse is gone after the kill: %w", err)
		}
		return "n1's table inet gatehouse and XDP filter stay in place: a dead node fails closed", nil
	})
}

func (d *demo) stepHADrain(ctx context.Context) (string, error) {
	n2 := d.haNodes[1]
	return d.failover(ctx, n2, func() error { return n2.cmd.Process.Signal(syscall.SIGTERM) }, func(ctx context.Context) (string, error) {
		ready, _ := d.curl(ctx, n2.name, "-s", "--max-time", "2", "http://"+haMetrics+"/readyz")
		if !strings.Contains(ready, "stopping") {
			return "", fmt.Errorf("n2 /readyz during withdraw_wait: %q, want not ready (stopping)", strings.TrimSpace(ready))
		}
		node, err := d.haGet(ctx, "--resolve", gateName+":443:"+n2.addr)
		if err != nil || node != n2.name {
			return "", fmt.Errorf("n2 no longer serves on its own address during withdraw_wait: %q %v", node, err)
		}
		select {
		case <-n2.exited:
		case <-time.After(15 * time.Second):
			return "", fmt.Errorf("n2 did not stop after withdraw_wait and the drain")
		}
		return fmt.Sprintf("n2 /readyz: %s; a request to n2's own address %s was still served by n2; then it drained and exited",
			strings.TrimSpace(ready), n2.addr), nil
	})
}

type haResult struct {
	start time.Time
	node  string
	err   error
}

// failover runs a curl loop (a new connection every 100 ms) from the
// cloud, does the event to lost, waits until the router's route no longer
// has it, runs after, and waits for five more requests. Every request begun
// after the route changed must be served by another node; those begun in
// between may fail (they went to the lost node).
func (d *demo) failover(ctx context.Context, lost *haNode, event func() error, after func(context.Context) (string, error)) (string, error) {
	var want []string
	for _, n := range d.haNodes {
		select {
		case <-n.exited:
		default:
			if n != lost {
				want = append(want, n.addr)
			}
		}
	}
	var (
		mu      sync.Mutex
		results []haResult
	)
	lctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for lctx.Err() == nil {
			r := haResult{start: time.Now()}
			r.node, r.err = d.haGet(lctx)
			if lctx.Err() != nil {
				return // cut short by the stop, not by the fleet
			}
			mu.Lock()
			results = append(results, r)
			mu.Unlock()
			select {
			case <-lctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	defer func() { stop(); wg.Wait() }()

	at := time.Now()
	if err := event(); err != nil {
		return "", err
	}
	var hops []string
	if !waitUntil(ctx, 15*time.Second, func() bool { hops = d.haHops(ctx); return slices.Equal(hops, want) }) {
		return "", fmt.Errorf("the router's route has %v after 15s, want %v", hops, want)
	}
	changed := time.Now()
	extra, err := after(ctx)
	if err != nil {
		return "", err
	}
	since := func() int {
		mu.Lock()
		defer mu.Unlock()
		k := 0
		for _, r := range results {
			if r.start.After(changed) {
				k++
			}
		}
		return k
	}
	if !waitUntil(ctx, 20*time.Second, func() bool { return since() >= 5 }) {
		return "", fmt.Errorf("the curl loop made fewer than 5 requests after the route changed")
	}
	stop()
	wg.Wait()

	var before, failed int
	served := map[string]int{}
	for _, r := range results {
		if !r.start.After(changed) {
			before++
			if r.err != nil {
				failed++
			}
			continue
		}
		if r.err != nil || r.node == lost.name {
			return "", fmt.Errorf("a request begun after the route changed went to %q: %v", r.node, r.err)
		}
		served[r.node]++
	}
	return fmt.Sprintf("the router's route to %s lost %s %v after the event: next hops now %s\n"+
		"curl loop: %d request(s) begun before that, %d failed; all %d begun after it served by %s\n%s",
		haVIP, lost.name, changed.Sub(at).Round(time.Millisecond), strings.Join(hops, ", "),
		before, failed, since(), tallyString(served), extra), nil
}

func (d *demo) stepHAStatus(ctx context.Context) (string, error) {
	out, err := d.cmd(ctx, "", d.bin, "status", "-c", d.haNodes[2].config)
	if err != nil {
		return "", err
	}
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "BGP") || strings.Contains(l, haRouterN) || strings.Contains(l, haVIP) {
			lines = append(lines, strings.TrimSpace(l))
		}
	}
	s := strings.Join(lines, "\n")
	if !strings.Contains(s, "up (established)") || !strings.Contains(s, "announced") {
		return "", fmt.Errorf("n3 status lacks the session or the announcement:\n%s", out)
	}
	return s, nil
}

// printHAStatus shows what BIRD has for the service address at the end.
func (d *demo) printHAStatus(ctx context.Context) {
	d.section("the router (birdc show route for " + haVIP + ")")
	out, err := d.birdc(ctx, "show", "route", "for", haVIP+"/32")
	if err != nil {
		d.fail("birdc show route", err)
		return
	}
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		fmt.Fprintln(d.out, "  "+l)
	}
}

func (d *demo) printHAHandsOn() {
	pki := d.path("pki")
	d.section("Try it by hand (as root, in another terminal)")
	for _, l := range []string{
		"# a tenant request; run it a few times to see the nodes take turns",
		fmt.Sprintf("ip netns exec %s curl --cacert %s/gatehouse-ca/ca.pem --cert %s/acme-cloud.pem --key %s/acme-cloud.key https://%s/orders/1",
			d.ns["cloud"], pki, pki, pki, gateName),
		"# the router's view",
		fmt.Sprintf("ip netns exec %s birdc -s %s show protocols", d.ns["router"], d.birdSock),
		fmt.Sprintf("ip netns exec %s ip route show %s", d.ns["router"], haVIP),
		"# the node left (n3)",
		fmt.Sprintf("%s status -c %s", d.bin, d.haNodes[2].config),
		fmt.Sprintf("tail -f %s", d.haNodes[2].log),
	} {
		fmt.Fprintln(d.out, "  "+l)
	}
}

func tallyString(m map[string]int) string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}
