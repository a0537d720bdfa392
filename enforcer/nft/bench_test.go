package nft

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

const benchPrefixes = 100_000

// benchPolicies returns a policy with benchPrefixes admitted IPv4 prefixes
// and a second one that differs in 1 % of them (half removed, half added).
func benchPolicies() (*policy.Policy, *policy.Policy) {
	all := randomPrefixes(benchPrefixes+benchPrefixes/200, 11)
	p1, p2 := goldenPolicy(), goldenPolicy()
	p1.Admitted.V4 = all[:benchPrefixes]
	p2.Admitted.V4 = all[benchPrefixes/200:]
	p2.Generation = 2
	return p1, p2
}

func reportApply(b *testing.B, start time.Time, n int) {
	b.ReportMetric(float64(time.Since(start).Microseconds())/1000/float64(n), "ms/apply")
}

// BenchmarkApplyFull replaces the whole table with 100k prefixes per
// iteration, as on start or after a change of rule shape.
func BenchmarkApplyFull(b *testing.B) {
	g := newGate(b, Config{})
	p1, _ := benchPolicies()
	n := 0
	start := time.Now()
	for b.Loop() {
		g.e.cur = nil // forget the generation: force a full replace
		if err := g.e.Apply(p1); err != nil {
			b.Fatal(err)
		}
		n++
	}
	reportApply(b, start, n)
}

// BenchmarkApplyDiff moves between two generations that differ in 1 % of
// 100k prefixes.
func BenchmarkApplyDiff(b *testing.B) {
	g := newGate(b, Config{})
	p1, p2 := benchPolicies()
	if err := g.e.Apply(p1); err != nil {
		b.Fatal(err)
	}
	n := 0
	start := time.Now()
	for b.Loop() {
		p := p2
		if n%2 == 1 {
			p = p1
		}
		if err := g.e.Apply(p); err != nil {
			b.Fatal(err)
		}
		n++
	}
	reportApply(b, start, n)
}

// nftSet writes the elements of prefixes in nft syntax.
func nftSet(ps []netip.Prefix) string {
	var sb strings.Builder
	for i, r := range toRanges(ps) {
		if i > 0 {
			sb.WriteString(",\n")
		}
		if r.from == r.to {
			sb.WriteString(r.from.String())
		} else {
			fmt.Fprintf(&sb, "%s-%s", r.from, r.to)
		}
	}
	return sb.String()
}

func writeFile(b *testing.B, name, content string) string {
	path := filepath.Join(b.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		b.Fatal(err)
	}
	return path
}

// BenchmarkNftFileFull loads the same 100k ranges with nft -f, replacing a
// table that holds only the set (less than Apply installs).
func BenchmarkNftFileFull(b *testing.B) {
	ns := netns.New(b, "nftbench")
	p1, _ := benchPolicies()
	path := writeFile(b, "full.nft", "table inet bench\ndelete table inet bench\n"+
		"table inet bench {\n\tset admitted_v4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = {\n"+
		nftSet(p1.Admitted.V4)+"\n\t\t}\n\t}\n}\n")
	n := 0
	start := time.Now()
	for b.Loop() {
		if out, err := ns.Command("nft", "-f", path).CombinedOutput(); err != nil {
			b.Fatalf("nft -f: %v: %s", err, out)
		}
		n++
	}
	reportApply(b, start, n)
}

// BenchmarkNftFileDiff applies the same 1 % change with nft -f.
func BenchmarkNftFileDiff(b *testing.B) {
	ns := netns.New(b, "nftbench")
	p1, p2 := benchPolicies()
	full := writeFile(b, "full.nft", "table inet bench {\n\tset admitted_v4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = {\n"+
		nftSet(p1.Admitted.V4)+"\n\t\t}\n\t}\n}\n")
	if out, err := ns.Command("nft", "-f", full).CombinedOutput(); err != nil {
		b.Fatalf("nft -f: %v: %s", err, out)
	}
	del, add := diffRanges(toRanges(p1.Admitted.V4), toRanges(p2.Admitted.V4))
	step := func(del, add []addrRange) string {
		var sb strings.Builder
		for _, rs := range []struct {
			verb string
			rs   []addrRange
		}{{"delete", del}, {"add", add}} {
			var ps []netip.Prefix
			for _, r := range rs.rs {
				ps = append(ps, netip.PrefixFrom(r.from, 24))
			}
			fmt.Fprintf(&sb, "%s element inet bench admitted_v4 { %s }\n", rs.verb, strings.ReplaceAll(nftSet(ps), "\n", " "))
		}
		return sb.String()
	}
	forward := writeFile(b, "forward.nft", step(del, add))
	back := writeFile(b, "back.nft", step(add, del))
	n := 0
	start := time.Now()
	for b.Loop() {
		path := forward
		if n%2 == 1 {
			path = back
		}
		if out, err := ns.Command("nft", "-f", path).CombinedOutput(); err != nil {
			b.Fatalf("nft -f: %v: %s", err, out)
		}
		n++
	}
	reportApply(b, start, n)
}
