package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// buildTopology creates the namespaces, the bridge and the veth pairs with
// their addresses, and waits until every link carries traffic.
func (d *demo) buildTopology(ctx context.Context) error {
	if err := d.addNamespaces(ctx, roles); err != nil {
		return err
	}
	if _, err := d.cmd(ctx, "", "ip", "-n", d.ns["wan"], "link", "add", "br0", "type", "bridge"); err != nil {
		return err
	}
	if _, err := d.cmd(ctx, "", "ip", "-n", d.ns["wan"], "link", "set", "br0", "up"); err != nil {
		return err
	}
	err := d.addLinks(ctx, []link{
		{"cloud", "eth0", "wan", "cloud"},
		{"intruder", "eth0", "wan", "intruder"},
		{"dmz", outsideIf, "wan", "dmz"},
		{"dmz", "inside", "internal", "eth0"},
	}, map[string][]string{ // role/interface → addresses
		"cloud/eth0":       {cloudV4 + "/24", cloudV6 + "/64"},
		"intruder/eth0":    {intruderV4 + "/24", intruderV6 + "/64"},
		"dmz/" + outsideIf: {gateV4 + "/24", gateV6 + "/64"},
		"dmz/inside":       {insideV4 + "/24"},
		"internal/eth0":    {"203.0.113.10/24", "203.0.113.20/24", "203.0.113.30/24"},
	})
	if err != nil {
		return err
	}
	hosts := fmt.Sprintf("127.0.0.1 localhost\n::1 localhost\n%s %s\n%s %s\n", gateV4, gateName, gateV6, gateName)
	return d.writeHosts([]string{"cloud", "intruder"}, hosts)
}

// addNamespaces creates one namespace per role, named
// "ghdemo-<id>-<role>", with loopback up and IPv6 on.
func (d *demo) addNamespaces(ctx context.Context, roles []string) error {
	b := make([]byte, 2)
	if _, err := rand.Read(b); err != nil {
		return err
	}
	d.id = hex.EncodeToString(b)
	d.ns = map[string]string{}
	for _, role := range roles {
		name := "ghdemo-" + d.id + "-" + role
		if _, err := d.cmd(ctx, "", "ip", "netns", "add", name); err != nil {
			return err
		}
		d.ns[role] = name
		d.onCleanup(func() { d.deleteNamespace(name) })
		if _, err := d.cmd(ctx, "", "ip", "-n", name, "link", "set", "lo", "up"); err != nil {
			return err
		}
		// IPv6 on, whatever a new namespace inherits from the host's
		// defaults; the write happens inside the namespace, so it is the
		// namespace's own setting. Without IPv6 in the kernel only the IPv6
		// step fails.
		_, _ = d.cmd(ctx, role, "sh", "-c",
			"for f in /proc/sys/net/ipv6/conf/all/disable_ipv6 /proc/sys/net/ipv6/conf/default/disable_ipv6; do [ -w $f ] && echo 0 > $f; done; true")
	}
	return nil
}

// link is a veth pair: in namespace a, interface ifA, its peer ifB in
// namespace b. A peer in "wan" joins the bridge br0 there.
type link struct{ a, ifA, b, ifB string }

// addLinks creates the veth pairs with their addresses (by
// "role/interface") and waits until every end carries traffic.
func (d *demo) addLinks(ctx context.Context, links []link, addrs map[string][]string) error {
	ip := func(args ...string) error { _, err := d.cmd(ctx, "", "ip", args...); return err }
	for _, l := range links {
		if err := ip("-n", d.ns[l.a], "link", "add", l.ifA, "type", "veth", "peer", "name", l.ifB, "netns", d.ns[l.b]); err != nil {
			return err
		}
		if l.b == "wan" {
			if err := ip("-n", d.ns["wan"], "link", "set", l.ifB, "master", "br0"); err != nil {
				return err
			}
		}
		for _, end := range [][2]string{{l.a, l.ifA}, {l.b, l.ifB}} {
			for _, a := range addrs[end[0]+"/"+end[1]] {
				args := []string{"-n", d.ns[end[0]], "addr", "add", a, "dev", end[1]}
				if strings.Contains(a, ":") {
					args = append(args, "nodad")
				}
				if err := ip(args...); err != nil {
					return err
				}
			}
			if err := ip("-n", d.ns[end[0]], "link", "set", end[1], "up"); err != nil {
				return err
			}
		}
	}
	for _, l := range links {
		for _, end := range [][2]string{{l.a, l.ifA}, {l.b, l.ifB}} {
			if err := d.waitLink(ctx, end[0], end[1]); err != nil {
				return err
			}
		}
	}
	return nil
}

// writeHosts gives the client namespaces an /etc/hosts naming the gate: the
// clients find it by name, as s3270 checks the server certificate by DNS
// name, and `ip netns exec` shows /etc/netns/NS/hosts as /etc/hosts inside
// NS.
func (d *demo) writeHosts(clients []string, hosts string) error {
	if _, err := os.Stat("/etc/netns"); errors.Is(err, os.ErrNotExist) {
		if err := os.Mkdir("/etc/netns", 0o755); err != nil {
			return err
		}
		// Removed again at exit if the demo created it and it is empty.
		d.onCleanup(func() { _ = os.Remove("/etc/netns") })
	}
	for _, role := range clients {
		etc := filepath.Join("/etc/netns", d.ns[role])
		if err := os.MkdirAll(etc, 0o755); err != nil {
			return err
		}
		d.onCleanup(func() {
			if err := os.RemoveAll(etc); err != nil {
				fmt.Fprintf(d.out, "cleanup: remove %s: %v\n", etc, err)
			}
		})
		if err := os.WriteFile(filepath.Join(etc, "hosts"), []byte(hosts), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// waitLink waits until dev in role's namespace is up with a queueing
// discipline attached (before that the kernel drops what is sent).
func (d *demo) waitLink(ctx context.Context, role, dev string) error {
	var last string
	if waitUntil(ctx, 5*time.Second, func() bool {
		out, err := d.cmd(ctx, "", "ip", "-n", d.ns[role], "-o", "link", "show", "dev", dev)
		last = out
		return err == nil && strings.Contains(out, "LOWER_UP") && !strings.Contains(out, "qdisc noop")
	}) {
		return nil
	}
	return fmt.Errorf("%s: %s did not come up: %s", d.ns[role], dev, last)
}

// deleteNamespace stops whatever still runs in the namespace (all of it
// started by the demo: the namespace is the demo's own) and deletes it.
func (d *demo) deleteNamespace(name string) {
	for attempt := 0; attempt < 20; attempt++ {
		out, err := exec.Command("ip", "netns", "pids", name).Output()
		if err != nil || strings.TrimSpace(string(out)) == "" {
			break
		}
		for _, f := range strings.Fields(string(out)) {
			var pid int
			if _, err := fmt.Sscan(f, &pid); err == nil && pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
		fmt.Fprintf(d.out, "cleanup: ip netns delete %s: %v %s\n", name, err, out)
	}
}
