package nft

import (
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// The chains of table inet gatehouse, and what each decides (see doc.go for
// the whole path of a packet).

// buildForward adds the forward chain: the admission of the input chain for
// flows routed through the appliance to listener ports of internal hosts.
// There is no loopback, management or scan rule: management reaches the
// appliance itself, and scan detection stays with the input chain (a
// source it blocks is dropped here too). Flows that enter on another
// interface than the outside one are internal and pass.
func (s *spec) buildForward(r *ruleBuilder, ch *nftables.Chain) {
	r.chain(ch)
	r.stateRules(fwdPrefix)
	if s.outside != "" {
		r.add(ruleFwdInternal, verdictAccept, iifnameNot(s.outside)...)
	}
	r.admission(s, fwdPrefix)
	r.blockedRule(fwdPrefix)
	if s.strict {
		// Echo requests to internal hosts from admitted sources only, as
		// in the input chain and XDP.
		r.echoAdmitted(fwdPrefix)
	}
	if s.strict {
		r.add(fwdPrefix+ruleStrictDrop, verdictDrop)
	}
}

// stateRules adds the rules every chain opens with: established and
// related flows pass, invalid ones drop. Established comes first so that
// nothing a scan (forged or not) puts in the blocklist cuts a live flow.
func (r *ruleBuilder) stateRules(prefix string) {
	r.add(prefix+ruleEstablished, verdictAccept, ctState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED)...)
	r.add(prefix+ruleInvalid, verdictDrop, ctState(expr.CtStateBitINVALID)...)
}

// blockedRule drops new flows from blocked sources; it comes after the
// management and listener rules, so it takes what is left.
func (r *ruleBuilder) blockedRule(prefix string) {
	for _, v6 := range []bool{false, true} {
		r.add(prefix+ruleBlocked, verdictDrop, concat(r.srcKey(v6), lookup(r.sets[setName(setBlocked, v6)], false))...)
	}
}

// srcKey loads the source into register 1 as the per-source sets key it:
// the address masked to the source prefix length of its family.
func (r *ruleBuilder) srcKey(v6 bool) []expr.Any {
	e := saddr(v6)
	bits, n := r.spec.srcBits(v6), 4
	if v6 {
		n = 16
	}
	if bits >= 8*n {
		return e
	}
	mask := make([]byte, n)
	for i := range mask {
		switch {
		case bits >= 8:
			mask[i] = 0xff
			bits -= 8
		case bits > 0:
			mask[i] = 0xff << (8 - bits)
			bits = 0
		}
	}
	return append(e, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(n), Mask: mask, Xor: make([]byte, n)})
}

// echoAdmitted accepts ICMP and ICMPv6 echo requests from admitted sources.
func (r *ruleBuilder) echoAdmitted(prefix string) {
	r.add(prefix+ruleICMP, verdictAccept, concat(l4proto(unix.IPPROTO_ICMP), icmpType(), cmpEq([]byte{8}),
		saddr(false), lookup(r.sets[setName(setAdmitted, false)], false))...)
	r.add(prefix+ruleICMP, verdictAccept, concat(l4proto(unix.IPPROTO_ICMPV6), icmpType(), cmpEq([]byte{128}),
		saddr(true), lookup(r.sets[setName(setAdmitted, true)], false))...)
}

// admission adds the rules for new TCP to listener_ports to the current
// chain: dropped unless admitted, over the rate, over the connection cap,
// else accepted. The counters are named prefix plus the rule. Both chains
// update the same rate_* and conns_* sets, so a source has one budget for
// the appliance's listeners and the routed ones together.
func (r *ruleBuilder) admission(s *spec, prefix string) {
	byName := r.sets
	listener := func() []expr.Any { return concat(l4proto(unix.IPPROTO_TCP), dport(1), lookup(byName[setPorts], false)) }
	for _, v6 := range []bool{false, true} {
		r.add(prefix+ruleNotAdmitted, verdictDrop, concat(listener(), saddr(v6), lookup(byName[setName(setAdmitted, v6)], true))...)
	}
	if s.rate.PerSecond > 0 {
		burst := s.rate.Burst
		if burst == 0 {
			burst = s.rate.PerSecond
		}
		for _, v6 := range []bool{false, true} {
			r.add(prefix+ruleRateLimited, verdictDrop, concat(listener(), r.srcKey(v6), dynset(byName[setName(setRate, v6)], unix.NFT_DYNSET_OP_UPDATE, 0,
				&expr.Limit{Type: expr.LimitTypePkts, Rate: uint64(s.rate.PerSecond), Unit: expr.LimitTimeSecond, Burst: burst, Over: true}))...)
		}
	}
	if s.maxConns > 0 {
		for _, v6 := range []bool{false, true} {
			r.add(prefix+ruleConnLimited, verdictDrop, concat(listener(), r.srcKey(v6), dynset(byName[setName(setConns, v6)], unix.NFT_DYNSET_OP_ADD, 0,
				&expr.Connlimit{Count: s.maxConns, Flags: expr.NFT_CONNLIMIT_F_INV}))...)
		}
	}
	r.add(prefix+ruleAdmitted, verdictAccept, listener()...)
}

// icmpv6Essentials are the ICMPv6 types a strict appliance must still
// receive unsolicited from anyone: MLD queries (so snooping switches keep
// forwarding solicited-node multicast), router advertisements, and neighbour
// solicitation and advertisement. Echo requests need an admitted source;
// errors about our own flows arrive as ct related and are accepted by the
// established rule.
var icmpv6Essentials = []byte{130, 134, 135, 136}

type verdict = expr.VerdictKind

const (
	verdictAccept = expr.VerdictAccept
	verdictDrop   = expr.VerdictDrop
)

type ruleBuilder struct {
	rs     *ruleset
	cur    *nftables.Chain
	sets   map[string]*nftables.Set
	nextID *uint32
	spec   *spec
}

// chain makes ch the chain the next rules go into.
func (b *ruleBuilder) chain(ch *nftables.Chain) {
	b.rs.chains = append(b.rs.chains, ch)
	b.cur = ch
}

// add appends a rule: match expressions, the rule's named counter, verdict.
func (b *ruleBuilder) add(name string, v verdict, match ...expr.Any) {
	exprs := append(slices.Clip(match),
		&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: name},
		&expr.Verdict{Kind: v})
	if !slices.Contains(b.rs.counters, name) {
		b.rs.counters = append(b.rs.counters, name)
	}
	tag := ruleTag(len(b.rs.rules), exprs)
	b.rs.rules = append(b.rs.rules, &nftables.Rule{
		Table: b.rs.table, Chain: b.cur, Exprs: exprs,
		UserData: userdata.Append(nil, tagType, tag),
	})
	b.rs.tags = append(b.rs.tags, tag)
}

// anonLookup creates a constant anonymous set (nft's inline { a, b }).
func (b *ruleBuilder) anonLookup(key nftables.SetDatatype, vals []byte) []expr.Any {
	*b.nextID++
	set := &nftables.Set{Table: b.rs.table, ID: *b.nextID, Name: "__set%d", Anonymous: true, Constant: true, KeyType: key}
	elems := make([]nftables.SetElement, len(vals))
	for i, v := range vals {
		elems[i] = nftables.SetElement{Key: []byte{v}}
	}
	b.rs.anon = append(b.rs.anon, anonSet{set, elems})
	return lookup(set, false)
}
