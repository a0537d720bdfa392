package nft

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// TableName is the one table this package owns, in family inet.
const TableName = "gatehouse"

// Rule names: the named counter of each rule, and the rule label of
// gatehouse_nft_packets_total. The IPv4 and IPv6 twin of a rule share one.
const (
	ruleLoopback    = "loopback"
	ruleBlocked     = "blocked"
	ruleEstablished = "established"
	ruleInvalid     = "invalid"
	ruleICMP        = "icmp_allowed"
	ruleNotAdmitted = "not_admitted"
	ruleSynProxy    = "syn_proxy"
	ruleRateLimited = "rate_limited"
	ruleConnLimited = "conn_limited"
	ruleAdmitted    = "admitted"
	ruleManagement  = "management"
	ruleScan        = "scan_detected"
	ruleFull        = "blocklist_full"
	ruleStrictDrop  = "strict_drop"
	ruleStrictProto = "strict_protocol"
)

// fwdPrefix names the counters of the forward path: fwd_ and the name of
// the input rule that does the same (fwd_admitted, fwd_not_admitted, ...),
// plus fwd_internal for flows that did not enter on the outside interface.
const (
	fwdPrefix       = "fwd_"
	ruleFwdInternal = fwdPrefix + "internal"
)

// Chain names and priorities.
const (
	chainPrerouting = "prerouting"
	chainInput      = "input"
	chainOutput     = "output"
	chainForward    = "forward"
	chainScanBlock  = "scan_block" // a regular chain: the scan rule jumps to it
	chainPriority   = -10          // before the usual filter chains at 0, after conntrack
	rawPriority     = -300         // before conntrack: where a SYN is left untracked
)

// Defaults for knobs the policy may leave zero.
const (
	rateIdle       = time.Minute // a rate bucket untouched this long is forgotten
	dynamicSetSize = 65535
)

// tagType is a private userdata TLV on every rule we install. It holds a hash
// of the rule's expressions; nft ignores unknown types, and a rule replaced
// or added by hand lacks it, which is how reconcile tells our rules apart.
const tagType userdata.Type = 0x47

var errBadPolicy = errors.New("invalid policy")

// spec is the desired state of one generation, kept in memory so the next
// generation is applied as a diff without reading sets back.
type spec struct {
	strict   bool
	rate     policy.Rate
	maxConns uint32
	scan     policy.ScanBlock // zero: scan detection off
	refill   policy.ScanRefill
	// forward adds the forward path; outside is the interface whose
	// forwarded flows it polices ("" means every interface).
	forward bool
	outside string
	// xdp is the interface the XDP layer filters ("" when it is off):
	// strict mode drops there, whatever conntrack says, what XDP drops
	// whatever the flow (see strictProtocols).
	xdp string
	// syn is what synproxy answers a SYN to a listener port with.
	syn synOptions

	// src4 and src6 are the prefix lengths that make one source for the
	// per-source sets (rate, conns, scan, blocked).
	src4, src6 int

	ports        []uint16
	mgmt4, mgmt6 []mgmtEntry
	// mgmtSrc4 and mgmtSrc6 are the management ranges without ports: the
	// sources scan detection never counts.
	mgmtSrc4, mgmtSrc6 []addrRange
	adm4, adm6         []addrRange
}

func newSpec(p *policy.Policy, syn synOptions) (*spec, error) {
	if p == nil {
		return nil, fmt.Errorf("%w: nil policy", errBadPolicy)
	}
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", errBadPolicy, err)
	}
	f, err := p.Filter()
	if err != nil {
		return nil, err // policy.ErrBadFilter says it is invalid
	}
	en := p.Enforcement
	s := &spec{
		strict:   f.Strict,
		rate:     en.NewConnRate,
		maxConns: en.MaxConnsPerSource,
		scan:     f.Scan,
		refill:   f.Refill,
		forward:  en.Forward,
		syn:      syn,
		src4:     f.SourceBits4,
		src6:     f.SourceBits6,
		ports:    f.Ports,
		adm4:     toRanges(p.Admitted.V4),
		adm6:     toRanges(p.Admitted.V6),
	}
	if en.XDP != policy.XDPOff {
		s.xdp = p.Interface
	}
	if s.forward {
		s.outside = p.Interface
		if len(s.outside) >= unix.IFNAMSIZ || strings.ContainsRune(s.outside, 0) {
			return nil, fmt.Errorf("%w: interface %q is not an interface name", errBadPolicy, s.outside)
		}
	}
	if len(s.xdp) >= unix.IFNAMSIZ || strings.ContainsRune(s.xdp, 0) {
		return nil, fmt.Errorf("%w: interface %q is not an interface name", errBadPolicy, s.xdp)
	}
	if s.rate.PerSecond == 0 {
		s.rate = policy.Rate{}
	}
	s.mgmt4 = mgmtEntries(f.Management, true)
	s.mgmt6 = mgmtEntries(f.Management, false)
	s.mgmtSrc4 = mgmtSources(f.Management, true)
	s.mgmtSrc6 = mgmtSources(f.Management, false)
	return s, nil
}

// sameShape reports whether two generations differ only in set contents, so
// the newer one can be applied as element changes.
func (s *spec) sameShape(o *spec) bool {
	return s.strict == o.strict && s.rate == o.rate && s.maxConns == o.maxConns &&
		s.scan == o.scan && s.refill == o.refill && s.forward == o.forward && s.outside == o.outside && s.xdp == o.xdp &&
		s.syn == o.syn && s.src4 == o.src4 && s.src6 == o.src6
}

func (s *spec) family(v6 bool) (mgmt []mgmtEntry, adm []addrRange) {
	if v6 {
		return s.mgmt6, s.adm6
	}
	return s.mgmt4, s.adm4
}

// mgmtSources returns the management ranges of one family.
func (s *spec) mgmtSources(v6 bool) []addrRange {
	if v6 {
		return s.mgmtSrc6
	}
	return s.mgmtSrc4
}

// srcBits is the prefix length of one source of the family.
func (s *spec) srcBits(v6 bool) int {
	if v6 {
		return s.src6
	}
	return s.src4
}

// sourceOf masks addr to the source it counts as in the per-source sets.
func (s *spec) sourceOf(addr netip.Addr) netip.Addr {
	addr = addr.Unmap()
	p, err := addr.Prefix(s.srcBits(addr.Is6()))
	if err != nil {
		return addr
	}
	return p.Addr()
}

// ruleset is everything one generation installs, built without the kernel.
type ruleset struct {
	table    *nftables.Table
	chains   []*nftables.Chain // base chains, then the regular ones
	sets     []*nftables.Set
	elems    map[string][]nftables.SetElement // initial elements of the small sets
	ranges   map[string][]addrRange           // admitted sets, encoded only when sent whole
	anon     []anonSet
	counters []string
	rules    []*nftables.Rule // of every chain, in chain order
	tags     [][]byte         // the tag of each rule, hashed with its position in rules
}

type anonSet struct {
	set   *nftables.Set
	elems []nftables.SetElement
}

func ourTable() *nftables.Table {
	return &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
}

var (
	ipv4Service = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService)
	ipv6Service = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetService)
)

// Set names.
func setName(base string, v6 bool) string {
	if v6 {
		return base + "_v6"
	}
	return base + "_v4"
}

const (
	setAdmitted   = "admitted"
	setManagement = "management"
	setMgmtSrc    = "management_sources"
	setBlocked    = "blocked"
	setRate       = "rate"
	setConns      = "conns"
	setScanPorts  = "scan_ports"
	setScanCount  = "scan_count"
	setPorts      = "listener_ports"
)

// build turns a spec into the objects of the table. Set IDs are assigned
// here, in order, so the same spec always gives the same bytes.
func (s *spec) build() *ruleset {
	t := ourTable()
	rs := &ruleset{
		table:  t,
		elems:  map[string][]nftables.SetElement{},
		ranges: map[string][]addrRange{},
	}
	var id uint32
	addSet := func(set *nftables.Set, elems []nftables.SetElement) *nftables.Set {
		id++
		set.ID = id
		set.Table = t
		rs.sets = append(rs.sets, set)
		rs.elems[set.Name] = elems
		return set
	}
	byName := map[string]*nftables.Set{}
	for _, v6 := range []bool{false, true} {
		addrType, concatType := nftables.TypeIPAddr, ipv4Service
		if v6 {
			addrType, concatType = nftables.TypeIP6Addr, ipv6Service
		}
		mgmt, adm := s.family(v6)
		dyn := func(base string, key nftables.SetDatatype, timeout time.Duration) {
			n := setName(base, v6)
			byName[n] = addSet(&nftables.Set{Name: n, KeyType: key, Dynamic: true,
				HasTimeout: timeout > 0, Timeout: timeout, Size: dynamicSetSize,
				Concatenation: key.Bytes > addrType.Bytes, KeyByteOrder: binaryutil.BigEndian}, nil)
		}
		n := setName(setAdmitted, v6)
		byName[n] = addSet(&nftables.Set{Name: n, KeyType: addrType, Interval: true}, nil)
		rs.ranges[n] = adm
		n = setName(setManagement, v6)
		byName[n] = addSet(&nftables.Set{Name: n, KeyType: concatType, Interval: true, Concatenation: true}, mgmtElements(mgmt))
		if s.scan.DistinctPorts > 0 {
			n = setName(setMgmtSrc, v6)
			byName[n] = addSet(&nftables.Set{Name: n, KeyType: addrType, Interval: true}, intervalElements(s.mgmtSources(v6)))
		}
		dyn(setBlocked, addrType, s.blockFor())
		if s.rate.PerSecond > 0 {
			dyn(setRate, addrType, rateIdle)
		}
		if s.maxConns > 0 {
			dyn(setConns, addrType, 0)
		}
		if s.scan.DistinctPorts > 0 {
			dyn(setScanPorts, concatType, s.scan.Window)
			dyn(setScanCount, addrType, s.scan.Window)
		}
	}
	byName[setPorts] = addSet(&nftables.Set{Name: setPorts, KeyType: nftables.TypeInetService, KeyByteOrder: binaryutil.BigEndian}, portElements(s.ports))
	// Sets sorted by name read better in nft list; IDs stay as assigned.
	slices.SortStableFunc(rs.sets, func(a, b *nftables.Set) int { return cmp.Compare(a.Name, b.Name) })

	r := &ruleBuilder{rs: rs, sets: byName, nextID: &id, spec: s}
	s.buildPrerouting(r)
	s.buildInput(r)
	s.buildOutput(r)
	if s.forward {
		s.buildForward(r)
	}
	if s.scan.DistinctPorts > 0 {
		s.buildScanBlock(r)
	}
	return rs
}

// blockFor is how long the blocked sets keep a source.
func (s *spec) blockFor() time.Duration {
	if s.scan.BlockFor > 0 {
		return s.scan.BlockFor
	}
	return policy.DefaultBlockFor
}
