package nft

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// fakeKernel records every batch an Enforcer sends and acknowledges it the
// way google/nftables' own tests do (echo); every read (dump) fails with
// ENOENT, as on a namespace without our table.
type fakeKernel struct {
	batches [][]netlink.Message
	reads   int
}

func (f *fakeKernel) dial(req []netlink.Message) ([]netlink.Message, error) {
	if len(req) == 0 {
		return nil, nil
	}
	if req[0].Header.Type != netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN) {
		f.reads++
		return nil, unix.ENOENT
	}
	batch := make([]netlink.Message, len(req))
	for i, m := range req {
		batch[i] = netlink.Message{Header: m.Header, Data: bytes.Clone(m.Data)}
	}
	f.batches = append(f.batches, batch)
	return req, nil
}

func newFake(t *testing.T) (*Enforcer, *fakeKernel) {
	t.Helper()
	e, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeKernel{}
	e.testDial = f.dial
	return e, f
}

// msgType is the nftables message type of m (NFT_MSG_*), or the raw type
// for batch delimiters.
func msgType(m netlink.Message) int {
	ht := int(m.Header.Type)
	if ht>>8 == unix.NFNL_SUBSYS_NFTABLES {
		return ht & 0xff
	}
	return ht
}

var msgNames = map[int]string{
	unix.NFNL_MSG_BATCH_BEGIN: "batch-begin", unix.NFNL_MSG_BATCH_END: "batch-end",
	unix.NFT_MSG_NEWTABLE: "newtable", unix.NFT_MSG_DELTABLE: "deltable",
	unix.NFT_MSG_NEWCHAIN: "newchain", unix.NFT_MSG_NEWRULE: "newrule",
	unix.NFT_MSG_NEWSET: "newset", unix.NFT_MSG_NEWSETELEM: "newsetelem",
	unix.NFT_MSG_DELSETELEM: "delsetelem", unix.NFT_MSG_NEWOBJ: "newobj",
}

func attrs(t *testing.T, m netlink.Message) map[uint16][]byte {
	t.Helper()
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint16][]byte{}
	for ad.Next() {
		out[ad.Type()] = ad.Bytes()
	}
	if err := ad.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// elemCount counts the elements in a NEWSETELEM or DELSETELEM message and
// returns the size of its element list attribute.
func elemCount(t *testing.T, m netlink.Message) (n, size int) {
	t.Helper()
	list := attrs(t, m)[unix.NFTA_SET_ELEM_LIST_ELEMENTS]
	ad, err := netlink.NewAttributeDecoder(list)
	if err != nil {
		t.Fatal(err)
	}
	for ad.Next() {
		n++
	}
	return n, len(list)
}

// checkBatchOwnTable asserts the invariant that keeps other tables safe:
// every message of every batch is family inet and names table gatehouse.
func checkBatchOwnTable(t *testing.T, batch []netlink.Message) {
	t.Helper()
	if msgType(batch[0]) != unix.NFNL_MSG_BATCH_BEGIN || msgType(batch[len(batch)-1]) != unix.NFNL_MSG_BATCH_END {
		t.Fatalf("batch not delimited: %v ... %v", batch[0].Header, batch[len(batch)-1].Header)
	}
	for i, m := range batch[1 : len(batch)-1] {
		if m.Data[0] != unix.NFPROTO_INET {
			t.Errorf("message %d (%s): family %d, want inet", i, msgNames[msgType(m)], m.Data[0])
		}
		// Attribute 1 is the table name in every message type we send.
		if got := attrs(t, m)[1]; string(got) != TableName+"\x00" {
			t.Errorf("message %d (%s): table %q, want %q", i, msgNames[msgType(m)], got, TableName)
		}
	}
}

func countTypes(batch []netlink.Message) map[string]int {
	out := map[string]int{}
	for _, m := range batch {
		out[msgNames[msgType(m)]]++
	}
	return out
}

func TestApplyIsOneBatchOnOwnTable(t *testing.T) {
	e, f := newFake(t)
	if err := e.Apply(goldenPolicy()); err != nil {
		t.Fatal(err)
	}
	if len(f.batches) != 1 {
		t.Fatalf("%d batches, want 1", len(f.batches))
	}
	b := f.batches[0]
	checkBatchOwnTable(t, b)
	got := countTypes(b)
	rs := mustSpec(t, goldenPolicy()).build()
	want := map[string]int{
		"batch-begin": 1, "batch-end": 1,
		"newtable": 2, "deltable": 1, // create-if-absent, delete, create: atomic replace
		"newobj":   len(rs.counters),
		"newset":   len(rs.sets) + len(rs.anon),
		"newchain": len(rs.chains),
		"newrule":  len(rs.rules),
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %d messages, want %d", k, got[k], v)
		}
	}
	// The replace order matters: the delete must come before anything is
	// created, and it must delete exactly our table.
	if msgType(b[1]) != unix.NFT_MSG_NEWTABLE || msgType(b[2]) != unix.NFT_MSG_DELTABLE || msgType(b[3]) != unix.NFT_MSG_NEWTABLE {
		t.Errorf("batch starts %s %s %s, want newtable deltable newtable",
			msgNames[msgType(b[1])], msgNames[msgType(b[2])], msgNames[msgType(b[3])])
	}
	for _, m := range b {
		if msgType(m) == unix.NFT_MSG_NEWTABLE {
			// No owner flag: the table must outlive the daemon.
			if fl := attrs(t, m)[unix.NFTA_TABLE_FLAGS]; binary.BigEndian.Uint32(fl) != 0 {
				t.Errorf("table flags %x, want 0", fl)
			}
		}
	}
}

func mustSpec(t testing.TB, p *policy.Policy) *spec {
	t.Helper()
	s, err := newSpec(p, defaultSynOptions())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// randomPrefixes returns n sorted, disjoint, non-adjacent IPv4 /24s
// (every other /24 of 1.0.0.0 upwards), deterministic for a seed.
func randomPrefixes(n int, seed uint64) []netip.Prefix {
	r := rand.New(rand.NewPCG(seed, 1))
	picked := map[uint32]bool{}
	for len(picked) < n {
		picked[r.Uint32N(1<<22)*2+1<<16] = true
	}
	out := make([]netip.Prefix, 0, n)
	for k := range picked {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], k<<8)
		out = append(out, netip.PrefixFrom(netip.AddrFrom4(b), 24))
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out
}

func bigPolicy(n int, seed uint64) *policy.Policy {
	p := goldenPolicy()
	p.Admitted.V4 = randomPrefixes(n, seed)
	return p
}

func TestLargeSetIsChunkedInOneBatch(t *testing.T) {
	const n = 100_000
	e, f := newFake(t)
	p := bigPolicy(n, 1)
	if err := e.Apply(p); err != nil {
		t.Fatal(err)
	}
	if len(f.batches) != 1 {
		t.Fatalf("%d batches, want 1", len(f.batches))
	}
	checkBatchOwnTable(t, f.batches[0])
	total, msgs := 0, 0
	for _, m := range f.batches[0] {
		if msgType(m) != unix.NFT_MSG_NEWSETELEM || string(attrs(t, m)[unix.NFTA_SET_NAME]) != "admitted_v4\x00" {
			continue
		}
		c, size := elemCount(t, m)
		if size > 0xffff-4 {
			t.Errorf("element list of %d bytes does not fit a netlink attribute", size)
		}
		total += c
		msgs++
	}
	if total != 2*n {
		t.Errorf("%d admitted_v4 elements sent, want %d (start and end of %d ranges)", total, 2*n, n)
	}
	if msgs < 2 {
		t.Errorf("%d element messages for %d elements: not chunked", msgs, 2*n)
	}
}

func TestDiffSendsOnlyChangedElements(t *testing.T) {
	e, f := newFake(t)
	p1 := bigPolicy(10_000, 2)
	if err := e.Apply(p1); err != nil {
		t.Fatal(err)
	}
	// 1 %: drop 50 prefixes, add 50 new ones.
	p2 := bigPolicy(10_000, 2)
	added := randomPrefixes(50, 3)
	v4 := slices.Clone(p2.Admitted.V4[50:])
	for _, a := range added {
		if !slices.Contains(v4, a) && !slices.Contains(p2.Admitted.V4[:50], a) {
			v4 = append(v4, a)
		}
	}
	slices.SortFunc(v4, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	p2.Admitted.V4 = v4
	p2.Generation = 2
	if err := e.Apply(p2); err != nil {
		t.Fatal(err)
	}
	if len(f.batches) != 2 {
		t.Fatalf("%d batches, want 2", len(f.batches))
	}
	b := f.batches[1]
	checkBatchOwnTable(t, b)
	del, add := diffRanges(toRanges(p1.Admitted.V4), toRanges(p2.Admitted.V4))
	var gotDel, gotAdd int
	for _, m := range b[1 : len(b)-1] {
		switch msgType(m) {
		case unix.NFT_MSG_DELSETELEM:
			n, _ := elemCount(t, m)
			gotDel += n
		case unix.NFT_MSG_NEWSETELEM:
			n, _ := elemCount(t, m)
			gotAdd += n
		default:
			t.Errorf("diff batch has a %s message", msgNames[msgType(m)])
		}
	}
	if gotDel != 2*len(del) || gotAdd != 2*len(add) || len(del) == 0 {
		t.Errorf("diff sent %d deletions and %d additions, want %d and %d", gotDel, gotAdd, 2*len(del), 2*len(add))
	}
	// The same generation again sends nothing at all.
	if err := e.Apply(p2); err != nil {
		t.Fatal(err)
	}
	if len(f.batches) != 2 {
		t.Errorf("unchanged generation sent a batch")
	}
}

func TestShapeChangeReplacesTable(t *testing.T) {
	e, f := newFake(t)
	if err := e.Apply(goldenPolicy()); err != nil {
		t.Fatal(err)
	}
	p := goldenPolicy()
	p.Enforcement.Mode = policy.ModeListeners
	if err := e.Apply(p); err != nil {
		t.Fatal(err)
	}
	if got := countTypes(f.batches[len(f.batches)-1])["deltable"]; got != 1 {
		t.Errorf("mode change: %d deltable, want a full replace", got)
	}
}

func TestBadPolicySendsNothing(t *testing.T) {
	unsorted := goldenPolicy()
	unsorted.Admitted.V4 = prefixes("203.0.113.0/24", "192.0.2.0/24")
	hostBits := goldenPolicy()
	hostBits.Admitted.V6 = prefixes("2001:db8::1/64")
	badMode := goldenPolicy()
	badMode.Enforcement.Mode = "open"
	noWindow := goldenPolicy()
	noWindow.Enforcement.ScanBlock.Window = 0
	mgmtPort := goldenPolicy()
	mgmtPort.Enforcement.Management[0].Ports = nil
	longIface := forwardPolicy()
	longIface.Interface = "an-interface-name-too-long"
	for name, p := range map[string]*policy.Policy{
		"nil": nil, "unsorted": unsorted, "host bits": hostBits, "mode": badMode,
		"scan window": noWindow, "management ports": mgmtPort, "forward interface": longIface,
	} {
		t.Run(name, func(t *testing.T) {
			e, f := newFake(t)
			err := e.Apply(p)
			if !errors.Is(err, errBadPolicy) && !errors.Is(err, policy.ErrBadFilter) {
				t.Errorf("error %v, want errBadPolicy or policy.ErrBadFilter", err)
			}
			if len(f.batches)+f.reads != 0 {
				t.Errorf("bad policy reached the kernel")
			}
		})
	}
}

func TestFailedFlushKeepsPreviousGeneration(t *testing.T) {
	e, f := newFake(t)
	if err := e.Apply(goldenPolicy()); err != nil {
		t.Fatal(err)
	}
	fail := true
	e.testDial = func(req []netlink.Message) ([]netlink.Message, error) {
		if fail && len(req) > 0 && req[0].Header.Type == netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN) {
			return nil, unix.EINVAL
		}
		return f.dial(req)
	}
	p2 := goldenPolicy()
	p2.Admitted.V4 = prefixes("192.0.2.0/24")
	if err := e.Apply(p2); err == nil {
		t.Fatal("Apply succeeded though the kernel refused the batch")
	}
	// The next attempt must diff against what the kernel still holds
	// (generation 1), so it deletes the 203.0.113.0 range again.
	fail = false
	if err := e.Apply(p2); err != nil {
		t.Fatal(err)
	}
	b := f.batches[len(f.batches)-1]
	if n := countTypes(b)["delsetelem"]; n != 1 {
		t.Errorf("retry sent %d deletions, want 1", n)
	}
}

func TestRulesCarryTags(t *testing.T) {
	rs := mustSpec(t, goldenPolicy()).build()
	seen := map[string]bool{}
	for i, r := range rs.rules {
		if !bytes.Contains(r.UserData, rs.tags[i]) {
			t.Errorf("rule %d lacks its tag", i)
		}
		if seen[string(rs.tags[i])] {
			t.Errorf("rule %d: duplicate tag", i)
		}
		seen[string(rs.tags[i])] = true
	}
}

// TestBatchGolden pins the bytes of the generation of goldenPolicy and of
// forwardPolicy, like google/nftables pins its messages against
// nft --debug=netlink.
func TestBatchGolden(t *testing.T) {
	for _, tc := range []struct {
		file string
		p    *policy.Policy
	}{
		{"batch.golden", goldenPolicy()},
		{"batch-forward.golden", forwardPolicy()},
	} {
		t.Run(tc.file, func(t *testing.T) {
			e, f := newFake(t)
			if err := e.Apply(tc.p); err != nil {
				t.Fatal(err)
			}
			var sb strings.Builder
			for _, m := range f.batches[0] {
				fmt.Fprintf(&sb, "%s flags=%#x\n", msgNames[msgType(m)], uint16(m.Header.Flags))
				for d := m.Data; len(d) > 0; {
					n := min(32, len(d))
					fmt.Fprintf(&sb, "  %x\n", d[:n])
					d = d[n:]
				}
			}
			got := sb.String()
			path := filepath.Join("testdata", tc.file)
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("batch differs from %s (-update to accept)", path)
			}
		})
	}
}

func TestNewRejectsBadNetNS(t *testing.T) {
	if _, err := New(Config{NetNS: -1}); !errors.Is(err, ErrBadNetNS) {
		t.Errorf("NetNS -1: %v", err)
	}
}
