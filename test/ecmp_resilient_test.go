package test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// TestECMPResilientNextHops answers whether Linux resilient next-hop groups
// avoid the ECMP rehash that breaks established flows of the surviving
// nodes when one node leaves. BIRD installs a plain multipath route and no
// next-hop objects, so the router's route to the service address is built
// here by hand both ways, with three nodes that echo on the service
// address; for each node in turn, 60 flows run, the node is removed from
// the route, and every flow makes one more round trip. The shares are
// logged for the README. It asserts what the kernel promises: new flows
// and every packet of the removed node's flows go elsewhere; with a
// resilient group no flow of a surviving node breaks; with hash-threshold
// multipath some do (the effect the resilient group exists to avoid).
func TestECMPResilientNextHops(t *testing.T) {
	netns.RequirePriv(t)
	router := netns.New(t, "router")
	client := netns.New(t, "client")
	router.Sysctl(t, "net.ipv4.ip_forward", "1")
	router.Sysctl(t, "net.ipv4.fib_multipath_hash_policy", "1")
	router.Exec(t, "ip", "link", "add", "br0", "type", "bridge")
	router.Exec(t, "ip", "addr", "add", bgpRouter+"/24", "dev", "br0")
	router.Exec(t, "ip", "link", "set", "br0", "up")
	cv := netns.Connect(t, router, []string{bgpClientGW + "/24"}, client, []string{bgpClient + "/24"})
	client.Exec(t, "ip", "route", "add", "default", "via", bgpClientGW, "dev", cv.B)
	names := []string{"n1", "n2", "n3"}
	addrs := make([]string, len(names))
	for i, name := range names {
		addrs[i] = fmt.Sprintf("198.51.100.%d", i+2)
		ns := netns.New(t, "node"+name)
		v := netns.Connect(t, router, nil, ns, []string{addrs[i] + "/24"})
		router.Exec(t, "ip", "link", "set", v.A, "master", "br0")
		ns.Exec(t, "ip", "route", "add", "default", "via", bgpRouter, "dev", v.B)
		ns.Exec(t, "ip", "addr", "add", bgpVIP+"/32", "dev", "lo")
		go serveEcho(ns.Listen(t, "tcp", bgpVIP+":7000"), name)
	}
	if out, err := router.Command("ip", "nexthop", "add", "id", "1", "via", addrs[0], "dev", "br0").CombinedOutput(); err != nil {
		netns.SkipOrFail(t, fmt.Sprintf("the kernel has no next-hop objects: %v: %s", err, out))
	}
	router.Exec(t, "ip", "nexthop", "del", "id", "1")
	dial := func(ctx context.Context) (net.Conn, error) {
		return client.DialContext(ctx, "tcp", "", bgpVIP+":7000")
	}

	var report []string
	multipathBroken := 0
	for _, kind := range []string{"multipath", "resilient"} {
		for lost := range names {
			install, remove := routeWays(kind, addrs, lost)
			for _, args := range install {
				router.Exec(t, "ip", args...)
			}
			fs := startFlows(t, 60, dial)
			before := fs.tally()
			if len(before) != len(names) {
				t.Fatalf("%s: 60 flows reached only %v: ECMP did not spread them", kind, before)
			}
			for _, args := range remove {
				router.Exec(t, "ip", args...)
			}
			// Round trips from now on are routed by the new route.
			at := time.Now()
			fs.settled(t, at, 15*time.Second)
			tl := fs.tally()
			fs.stop()
			total, broken := tl.survivors(names[lost])
			if c := tl[names[lost]]; c[0] != 0 {
				t.Errorf("%s without %s: %d of its flows still reach it", kind, names[lost], c[0])
			}
			for range 20 {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				c, err := dial(ctx)
				cancel()
				if err != nil {
					t.Fatalf("%s without %s: new flow: %v", kind, names[lost], err)
				}
				name, err := readName(c)
				c.Close()
				if err != nil || name == names[lost] {
					t.Errorf("%s without %s: a new flow reached %q (%v)", kind, names[lost], name, err)
				}
			}
			switch kind {
			case "multipath":
				multipathBroken += broken
			case "resilient":
				if broken != 0 {
					t.Errorf("resilient group without %s: %d of %d flows of the surviving nodes broke: %v", names[lost], broken, total, tl)
				}
			}
			report = append(report, fmt.Sprintf("%s, %s removed: %d of %d survivor flows broke (%.0f%%) [%v]",
				kind, names[lost], broken, total, 100*float64(broken)/float64(total), tl))
			router.Exec(t, "ip", "route", "del", bgpVIP+"/32")
			if kind == "resilient" {
				router.Exec(t, "ip", "nexthop", "flush")
			}
		}
	}
	if multipathBroken == 0 {
		t.Errorf("hash-threshold multipath broke no flow of a surviving node in three removals: the rehash the README describes did not happen")
	}
	t.Logf("ECMP rehash when one of three next hops goes:\n  %s", strings.Join(report, "\n  "))
}

// routeWays returns the ip commands that install the route to the service
// address over addrs, and those that then remove addrs[lost] from it: a
// plain multipath route (as BIRD installs it), replaced by one without the
// lost next hop, or a resilient next-hop group whose member is deleted.
func routeWays(kind string, addrs []string, lost int) (install, remove [][]string) {
	if kind == "multipath" {
		route := func(skip int) []string {
			args := []string{"route", "replace", bgpVIP + "/32"}
			for i, a := range addrs {
				if i != skip {
					args = append(args, "nexthop", "via", a, "dev", "br0")
				}
			}
			return args
		}
		return [][]string{route(-1)}, [][]string{route(lost)}
	}
	var ids []string
	for i, a := range addrs {
		id := fmt.Sprint(i + 1)
		ids = append(ids, id)
		install = append(install, []string{"nexthop", "add", "id", id, "via", a, "dev", "br0"})
	}
	install = append(install,
		[]string{"nexthop", "add", "id", "100", "group", strings.Join(ids, "/"), "type", "resilient", "buckets", "64", "idle_timer", "120"},
		[]string{"route", "replace", bgpVIP + "/32", "nhid", "100"})
	return install, [][]string{{"nexthop", "del", "id", fmt.Sprint(lost + 1)}}
}
