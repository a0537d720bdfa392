package bpf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"

	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// rig is one loaded build of the program with a generation in force, run
// through BPF_PROG_TEST_RUN: no interface is involved.
type rig struct {
	coll *ebpf.Collection
	prog *ebpf.Program
	gen  *ebpf.Map
	lpm  bool
}

func newRig(t testing.TB, lpm bool) *rig {
	t.Helper()
	netns.RequirePriv(t)
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	spec, err := Spec(lpm)
	if err != nil {
		t.Fatal(err)
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		t.Fatalf("load (lpm=%v): %v", lpm, err)
	}
	r := &rig{coll: coll, prog: coll.Programs[ProgXDP], lpm: lpm}
	t.Cleanup(func() {
		if r.gen != nil {
			r.gen.Close()
		}
		coll.Close()
	})
	return r
}

// apply publishes g; the LPM build also gets its tries filled (once per rig).
func (r *rig) apply(t testing.TB, g *Generation) {
	t.Helper()
	pages, err := g.Encode()
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewGenerationMap(pages)
	if err != nil {
		t.Fatal(err)
	}
	if err := Publish(r.coll.Maps[MapGen], m); err != nil {
		t.Fatal(err)
	}
	if r.gen != nil {
		r.gen.Close()
	}
	r.gen = m
	if r.lpm {
		if err := FillLPM(r.coll.Maps[MapLPM4], r.coll.Maps[MapLPM6], g.V4, g.V6); err != nil {
			t.Fatal(err)
		}
	}
}

// run returns the XDP action for one frame.
func (r *rig) run(t testing.TB, frame []byte) uint32 {
	t.Helper()
	ret, err := r.prog.Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return ret
}

// counters sums the per-CPU counters.
func (r *rig) counters(t testing.TB) map[[2]int]uint64 {
	t.Helper()
	out := map[[2]int]uint64{}
	for a := range Actions {
		for re := range Reasons {
			var per []uint64
			if err := r.coll.Maps[MapCounters].Lookup(CounterIndex(a, re), &per); err != nil {
				t.Fatal(err)
			}
			for _, v := range per {
				out[[2]int{a, re}] += v
			}
		}
	}
	return out
}

const (
	xdpDrop = 1
	xdpPass = 2
)

// frame builds test packets; the zero value of each field means "usual".
type frame struct {
	vlans    []uint16 // TPIDs, outermost first
	src, dst string
	proto    uint8  // 6, 17, 1, 58, or anything
	sport    uint16 // TCP and UDP; 0 means 40000
	dport    uint16
	flags    uint8 // TCP flags; 0 means SYN
	icmpType uint8
	v4Opts   int // bytes of IPv4 options (multiple of 4)
	ext      []ext
	fragOff  uint16 // in 8-byte units
	more     bool
	l4Len    int // transport bytes present; 0 means the full header
	mutate   func(b []byte, l3, l4 int)
}

type ext struct {
	kind uint8 // 0 hop-by-hop, 43 routing, 60 dst opts, 44 fragment, 51 AH
	len  int   // bytes, multiple of 8 (of 4 for AH)
}

func (f frame) bytes() []byte {
	src := netip.MustParseAddr(f.src)
	dst := netip.MustParseAddr(f.dst)
	proto := f.proto
	if proto == 0 {
		proto = 6
	}
	sport := f.sport
	if sport == 0 {
		sport = 40000
	}
	var l4 []byte
	switch proto {
	case 6:
		l4 = make([]byte, 20)
		binary.BigEndian.PutUint16(l4[0:], sport)
		binary.BigEndian.PutUint16(l4[2:], f.dport)
		l4[12] = 5 << 4
		l4[13] = f.flags
		if f.flags == 0 {
			l4[13] = 0x02
		}
	case 17:
		l4 = make([]byte, 8)
		binary.BigEndian.PutUint16(l4[0:], sport)
		binary.BigEndian.PutUint16(l4[2:], f.dport)
		binary.BigEndian.PutUint16(l4[4:], 8)
	case 1, 58:
		l4 = make([]byte, 8)
		l4[0] = f.icmpType
	default:
		l4 = make([]byte, 8)
	}
	if f.l4Len != 0 {
		l4 = l4[:f.l4Len]
	}
	b := make([]byte, 12, 128)
	copy(b, []byte{2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2})
	for _, tp := range f.vlans {
		b = binary.BigEndian.AppendUint16(b, tp)
		b = binary.BigEndian.AppendUint16(b, 42)
	}
	var l3 int
	if src.Is4() {
		b = binary.BigEndian.AppendUint16(b, 0x0800)
		l3 = len(b)
		ihl := 20 + f.v4Opts
		h := make([]byte, ihl)
		h[0] = 0x40 | byte(ihl/4)
		binary.BigEndian.PutUint16(h[2:], uint16(ihl+len(l4)))
		fo := f.fragOff
		if f.more {
			fo |= 0x2000
		}
		binary.BigEndian.PutUint16(h[6:], fo)
		h[8] = 64
		h[9] = proto
		for i := 20; i < ihl; i++ {
			h[i] = 1 // NOP options
		}
		s, d := src.As4(), dst.As4()
		copy(h[12:], s[:])
		copy(h[16:], d[:])
		b = append(b, h...)
	} else {
		b = binary.BigEndian.AppendUint16(b, 0x86dd)
		l3 = len(b)
		h := make([]byte, 40)
		h[0] = 0x60
		next := proto
		if len(f.ext) > 0 {
			next = f.ext[0].kind
		}
		h[6] = next
		h[7] = 64
		s, d := src.As16(), dst.As16()
		copy(h[8:], s[:])
		copy(h[24:], d[:])
		var exts []byte
		for i, e := range f.ext {
			n := proto
			if i+1 < len(f.ext) {
				n = f.ext[i+1].kind
			}
			x := make([]byte, e.len)
			x[0] = n
			switch e.kind {
			case 44:
				fo := f.fragOff << 3
				if f.more {
					fo |= 1
				}
				binary.BigEndian.PutUint16(x[2:], fo)
			case 51:
				x[1] = byte(e.len/4 - 2)
			default:
				x[1] = byte(e.len/8 - 1)
			}
			exts = append(exts, x...)
		}
		binary.BigEndian.PutUint16(h[4:], uint16(len(exts)+len(l4)))
		b = append(b, h...)
		b = append(b, exts...)
	}
	l4off := len(b)
	b = append(b, l4...)
	if f.mutate != nil {
		f.mutate(b, l3, l4off)
	}
	return b
}

// feedPrefixes reads the ip_prefix and ipv6_prefix values of an AWS-format
// feed file.
func feedPrefixes(t testing.TB, path string) (v4, v6 []netip.Prefix) {
	t.Helper()
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		netns.SkipOrFail(t, fmt.Sprintf("feed file %s not present (../shared/testdata/feeds)", path))
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"ip_prefix"`, `"ipv6_prefix"`} {
		rest := data
		for {
			i := bytes.Index(rest, []byte(key))
			if i < 0 {
				break
			}
			rest = rest[i+len(key):]
			q1 := bytes.IndexByte(rest, '"')
			q2 := bytes.IndexByte(rest[q1+1:], '"')
			pr, err := netip.ParsePrefix(string(rest[q1+1 : q1+1+q2]))
			if err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			if pr.Addr().Is4() {
				v4 = append(v4, pr)
			} else {
				v6 = append(v6, pr)
			}
			rest = rest[q1+1+q2:]
		}
	}
	return v4, v6
}

// azurePrefixes reads every string of every "addressPrefixes" array of an
// Azure service tags file.
func azurePrefixes(t testing.TB, path string) (v4, v6 []netip.Prefix) {
	t.Helper()
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		netns.SkipOrFail(t, fmt.Sprintf("feed file %s not present (../shared/testdata/feeds)", path))
	}
	if err != nil {
		t.Fatal(err)
	}
	key := []byte(`"addressPrefixes"`)
	seen := map[netip.Prefix]bool{}
	for rest := data; ; {
		i := bytes.Index(rest, key)
		if i < 0 {
			break
		}
		rest = rest[i+len(key):]
		end := bytes.IndexByte(rest, ']')
		if end < 0 {
			t.Fatalf("%s: unterminated addressPrefixes", path)
		}
		for _, f := range bytes.Split(rest[:end], []byte(",")) {
			f = bytes.Trim(f, " \t\r\n:[\"")
			if len(f) == 0 {
				continue
			}
			pr, err := netip.ParsePrefix(string(f))
			if err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			if seen[pr] {
				continue
			}
			seen[pr] = true
			if pr.Addr().Is4() {
				v4 = append(v4, pr)
			} else {
				v6 = append(v6, pr)
			}
		}
		rest = rest[end:]
	}
	return v4, v6
}
