package test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestBGPMD5Password runs BIRD with a TCP MD5 password on its sessions and
// two nodes: n1 with the same password comes up and its route is
// installed; n2 with a wrong one gets no session (the router's kernel drops
// its signed SYNs, which it counts) and no route, and says so in its metric.
func TestBGPMD5Password(t *testing.T) {
	bt := newBGPTopologyWith(t, 2, bgpOpts{password: "md5-shared-key"})
	n1, n2 := bt.nodes[0], bt.nodes[1]
	n2.password = "a-wrong-key"
	n2.writeConfig(t, bt.nodeConfig(n2, ""))
	n1.start(t, true)
	n2.start(t, true)
	bt.waitHops(t, "n1 with the right password", 20*time.Second, n1)
	bt.wantMetrics(t, n1, 1, 1)

	// n2 has dialled: the router's kernel refused a SYN for its bad signature.
	bt.waitRoute(t, "an MD5 failure counted in the router", 30*time.Second, func(string, error) bool {
		return bt.md5Failures(t) > 0
	})
	if out, _ := bt.birdcCmd("show", "protocols", n2.name); strings.Contains(out, "Established") {
		t.Errorf("n2 with a wrong password has a session:\n%s", out)
	}
	if _, kernel := bt.nextHops(t); len(kernel) != 1 || kernel[0] != n1.addr {
		t.Errorf("router kernel route has %v, want n1 only", kernel)
	}
	_, body := n2.d.get(t, "/metrics")
	if want := fmt.Sprintf(`gatehouse_bgp_session_up{neighbor=%q} 0`, bgpRouter); !strings.Contains(body, want) {
		t.Errorf("n2 metrics lack %s", want)
	}
}

// md5Failures reads TcpExtTCPMD5Failure of the router's namespace.
func (bt *bgpTopology) md5Failures(t *testing.T) int {
	t.Helper()
	lines := strings.Split(bt.router.Exec(t, "cat", "/proc/net/netstat"), "\n")
	for i := 0; i+1 < len(lines); i++ {
		if !strings.HasPrefix(lines[i], "TcpExt:") || !strings.HasPrefix(lines[i+1], "TcpExt:") {
			continue
		}
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		for j, name := range names {
			if name == "TCPMD5Failure" && j < len(values) {
				n, _ := strconv.Atoi(values[j])
				return n
			}
		}
	}
	t.Fatal("no TcpExt TCPMD5Failure counter in the router's /proc/net/netstat")
	return 0
}

// TestBGPIPv6Neighbor runs an IPv6 session beside the IPv4 one: the node
// announces its /128 to the IPv6 neighbour, BIRD has it, the router's
// kernel routes it to the node (the node's listener answers the router
// over it), and SIGTERM withdraws it.
func TestBGPIPv6Neighbor(t *testing.T) {
	bt := newBGPTopologyWith(t, 1, bgpOpts{v6: true})
	n1 := bt.nodes[0]
	n1.start(t, true)
	bt.waitHops(t, "IPv4 route", 20*time.Second, n1)
	hop := "via " + n1.addr6
	bt.waitRoute(t, "the /128 in BIRD and the router's kernel", 20*time.Second, func(string, error) bool {
		out, err := bt.birdcCmd("show", "route", "for", bgpVIP6+"/128")
		return err == nil && strings.Contains(out, hop) &&
			strings.Contains(bt.router.Exec(t, "ip", "-6", "route", "show", bgpVIP6+"/128"), hop)
	})
	_, body := n1.d.get(t, "/metrics")
	for _, want := range []string{
		fmt.Sprintf(`gatehouse_bgp_session_up{neighbor=%q} 1`, bgpRouter6),
		fmt.Sprintf(`gatehouse_bgp_announced{prefix=%q} 1`, bgpVIP6+"/128"),
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	c, err := bt.router.DialContext(ctx, "tcp", "", "["+bgpVIP6+"]:443")
	cancel()
	if err != nil {
		t.Fatalf("the router reaches no node on the /128: %v", err)
	}
	c.Close()

	n1.signal(t, syscall.SIGTERM)
	bt.waitRoute(t, "the /128 withdrawn", 10*time.Second, func(string, error) bool {
		return !strings.Contains(bt.router.Exec(t, "ip", "-6", "route", "show", bgpVIP6+"/128"), hop)
	})
}
