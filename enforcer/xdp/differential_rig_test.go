package xdp

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/gatehouse-dmz/gatehouse/bpf"
	"github.com/gatehouse-dmz/gatehouse/enforcer/nft"
	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
	"golang.org/x/sys/unix"
)

// diffXDP is the program loaded for BPF_PROG_TEST_RUN, outside any
// interface. It runs in the gate's namespace: BPF_PROG_TEST_RUN gives it
// that namespace's loopback as the receiving device, so its conntrack
// lookup sees the flows the gate opened.
type diffXDP struct {
	coll *ebpf.Collection
	gen  *ebpf.Map
	ns   *netns.NS
}

// newDiffXDP loads the program, or with noCT the program as it runs where
// the kernel has no conntrack kfuncs (bpf.WithoutConntrack).
func newDiffXDP(t *testing.T, ns *netns.NS, noCT bool) *diffXDP {
	t.Helper()
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	spec, err := bpf.Spec(false)
	if err != nil {
		t.Fatal(err)
	}
	if noCT {
		if err := bpf.WithoutConntrack(spec); err != nil {
			t.Fatal(err)
		}
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		t.Fatal(err)
	}
	x := &diffXDP{coll: coll, ns: ns}
	t.Cleanup(func() {
		if x.gen != nil {
			x.gen.Close()
		}
		coll.Close()
	})
	return x
}

// apply publishes p as Apply does, and blocks the blocked classes as
// Block does.
func (x *diffXDP) apply(t *testing.T, p *policy.Policy, eph [2]uint16) {
	t.Helper()
	g, err := compile(p, eph)
	if err != nil {
		t.Fatal(err)
	}
	pages, err := g.Encode()
	if err != nil {
		t.Fatal(err)
	}
	m, err := bpf.NewGenerationMap(pages)
	if err != nil {
		t.Fatal(err)
	}
	if err := bpf.Publish(x.coll.Maps[bpf.MapGen], m); err != nil {
		t.Fatal(err)
	}
	if x.gen != nil {
		x.gen.Close()
	}
	x.gen = m
	until := monotonic() + uint64(time.Hour)
	for _, c := range diffClasses {
		if !c.blocked {
			continue
		}
		if err := x.coll.Maps[bpf.MapBlock4].Put(p.Enforcement.SourcePrefix.Source(c.v4).Addr().As4(), until); err != nil {
			t.Fatal(err)
		}
		if err := x.coll.Maps[bpf.MapBlock6].Put(p.Enforcement.SourcePrefix.Source(c.v6).Addr().As16(), until); err != nil {
			t.Fatal(err)
		}
	}
	if err := bpf.SetBlockActive(x.coll.Maps[bpf.MapState], true); err != nil {
		t.Fatal(err)
	}
}

func (x *diffXDP) pass(t *testing.T, frame []byte) bool {
	t.Helper()
	var ret uint32
	err := x.ns.Do(func() (err error) {
		ret, err = x.coll.Programs[bpf.ProgXDP].Run(&ebpf.RunOptions{Data: frame})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return ret == 2 // XDP_PASS
}

// counter returns the program's counter of an action and reason, summed
// over CPUs.
func (x *diffXDP) counter(t *testing.T, action, reason string) uint64 {
	t.Helper()
	a, r := slices.Index(bpf.Actions, action), slices.Index(bpf.Reasons, reason)
	if a < 0 || r < 0 {
		t.Fatalf("no counter %s/%s", action, reason)
	}
	var per []uint64
	if err := x.coll.Maps[bpf.MapCounters].Lookup(bpf.CounterIndex(a, r), &per); err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, v := range per {
		n += v
	}
	return n
}

// diffRig puts packets through both layers: the program with
// BPF_PROG_TEST_RUN, and on a veth the nftables table, whose verdict on
// each packet is read from nftables' trace.
type diffRig struct {
	wire, gate *netns.NS
	dev        string // the gate's end of the veth
	wireDev    string
	gateMAC    net.HardwareAddr
	ne         *nft.Enforcer
	tr         *tracer
	x          *diffXDP
	eph        [2]uint16
	marker     uint32

	rows, legit, mismatches int
	// disagree, when set, collects the rows where the layers disagree
	// instead of failing the test (the mutation test).
	disagree *[]string
}

// verdictOf sends pk through both layers and compares their verdicts. A
// packet XDP drops must be one nftables drops too, always; a packet XDP
// passes and nftables drops is allowed only where why says why (XDP left
// it to conntrack). A fragmented datagram passes XDP only if every fragment does.
// It returns XDP's verdict.
func (d *diffRig) verdictOf(t *testing.T, name string, pk netns.Packet, why string) bool {
	t.Helper()
	d.marker++
	pk.ID = d.marker
	if pk.SrcPort == 0 {
		pk.SrcPort = uint16(20000 + d.marker)
	}
	frames, err := pk.Frames(d.gateMAC)
	if err != nil {
		t.Fatal(err)
	}
	var each []string
	xdpPass := true
	for _, f := range frames {
		ok := d.x.pass(t, f)
		xdpPass = xdpPass && ok
		each = append(each, passDrop(ok))
	}
	if err := d.wire.Send(d.wireDev, frames); err != nil {
		t.Fatal(err)
	}
	nv, err := d.tr.wait(d.marker, 5*time.Second)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	d.rows++
	switch {
	case xdpPass == nv.accept:
	case xdpPass && why != "":
		d.legit++
		t.Logf("%s: XDP passes, nftables drops (rule handle %d): %s", name, nv.rule, why)
	case d.disagree != nil:
		d.mismatches++
		*d.disagree = append(*d.disagree, name)
	default:
		d.mismatches++
		t.Errorf("%s: XDP %s (fragments: %s), nftables %s (rule handle %d)",
			name, passDrop(xdpPass), strings.Join(each, ", "), passDrop(nv.accept), nv.rule)
	}
	return xdpPass
}

// applyBoth applies p to both layers and blocks the blocked classes in
// both, as each layer's Block takes a block from the other.
func (d *diffRig) applyBoth(t *testing.T, p *policy.Policy) {
	t.Helper()
	p.Interface = d.dev // where XDP filters: nftables mirrors strict mode's protocol drops there
	if err := d.ne.Apply(p); err != nil {
		t.Fatal(err)
	}
	for _, c := range diffClasses {
		if c.blocked {
			for _, a := range []netip.Addr{c.v4, c.v6} {
				if err := d.ne.Block(a, time.Hour); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	d.x.apply(t, p, d.eph)
}

// newDiffRig builds the gate and the wire; noCT loads the program without
// its conntrack lookup (see newDiffXDP).
func newDiffRig(t *testing.T, noCT bool) *diffRig {
	wire := netns.New(t, "wire")
	gate := netns.New(t, "gate")
	v := netns.Connect(t, wire, nil, gate, []string{diffGate4.String() + "/24", diffGate6.String() + "/64"})
	fd, err := unix.Open(gate.Path(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	ne, err := nft.New(nft.Config{NetNS: fd})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ne.Close() })
	// Every packet is traced from prerouting, after reassembly (-400) and
	// before table gatehouse's raw chain (-300); the tracer keeps the
	// table's drop, wherever it is, or the verdict of its input chain.
	gate.Exec(t, "nft", "add table inet witness { chain pre { type filter hook prerouting priority -350; policy accept; meta nftrace set 1; }; }")
	tr, err := newTracer(fd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	d := &diffRig{wire: wire, gate: gate, dev: v.B, wireDev: v.A, gateMAC: gate.HardwareAddr(t, v.B), ne: ne, tr: tr, x: newDiffXDP(t, gate, noCT)}
	if err := gate.Do(func() error { d.eph = ephemeralPorts(); return nil }); err != nil {
		t.Fatal(err)
	}
	// The gate answers every class on the veth: every /64 of the classes
	// is on its link, and the neighbours are the sender of the frames.
	gate.Exec(t, "ip", "-6", "route", "add", "2001:db8::/48", "dev", d.dev)
	for _, c := range append(diffClasses, diffScanners...) {
		for _, a := range []netip.Addr{c.v4, c.v6} {
			gate.Exec(t, "ip", "neigh", "replace", a.String(), "lladdr", "02:00:00:00:00:47", "dev", d.dev, "nud", "permanent")
		}
	}
	return d
}
