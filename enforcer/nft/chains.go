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

func (s *spec) baseChain(name string, hook *nftables.ChainHook, prio nftables.ChainPriority, pol nftables.ChainPolicy) *nftables.Chain {
	return &nftables.Chain{
		Name: name, Table: ourTable(), Type: nftables.ChainTypeFilter,
		Hooknum: hook, Priority: nftables.ChainPriorityRef(prio), Policy: &pol,
	}
}

// policy is the verdict of the input and forward chains: drop in strict
// mode.
func (s *spec) policy() nftables.ChainPolicy {
	if s.strict {
		return nftables.ChainPolicyDrop
	}
	return nftables.ChainPolicyAccept
}

// buildPrerouting adds the raw-priority chain, before conntrack: a bare
// SYN to a listener port is dropped there when its source is not
// admitted, and otherwise left untracked, so that conntrack holds nothing
// of it, nor spends anything on it, until synproxy has seen the
// handshake's last ACK prove the source (see buildInput). A management
// range's SYN to its own port stays tracked: it is no listener connection.
// Routed SYNs are left alone unless the forward path polices them.
func (s *spec) buildPrerouting(r *ruleBuilder) {
	r.chain(s.baseChain(chainPrerouting, nftables.ChainHookPrerouting, rawPriority, nftables.ChainPolicyAccept))
	for _, v6 := range []bool{false, true} {
		// Not from loopback: the appliance's own connections to its
		// listeners (and the SYN synproxy sends the listener) pass as
		// the input chain's first rule lets them.
		local := concat(iifnameNot("lo"), r.listenerSYN(), fibDaddrLocal(true),
			saddr(v6), dport(concatPortReg(v6)), lookup(r.sets[setName(setManagement, v6)], true))
		r.add(ruleNotAdmitted, verdictDrop, concat(local, saddr(v6), lookup(r.sets[setName(setAdmitted, v6)], true))...)
		r.addTail("", []expr.Any{&expr.Notrack{}}, local...)
	}
	if !s.forward {
		return
	}
	routed := func() []expr.Any { return concat(s.fromOutside(), r.listenerSYN(), fibDaddrLocal(false)) }
	for _, v6 := range []bool{false, true} {
		r.add(fwdPrefix+ruleNotAdmitted, verdictDrop, concat(routed(), saddr(v6), lookup(r.sets[setName(setAdmitted, v6)], true))...)
	}
	r.addTail("", []expr.Any{&expr.Notrack{}}, routed()...)
}

// fromOutside matches flows that entered on the outside interface, or
// every flow without one.
func (s *spec) fromOutside() []expr.Any {
	if s.outside == "" {
		return nil
	}
	return iifname(s.outside)
}

// buildInput adds the input chain.
func (s *spec) buildInput(r *ruleBuilder) {
	r.chain(s.baseChain(chainInput, nftables.ChainHookInput, chainPriority, s.policy()))
	r.add(ruleLoopback, verdictAccept, iifname("lo")...)
	s.strictProtocols(r, "")
	r.add(ruleEstablished, verdictAccept, ctState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED)...)
	r.synProxy("", nil, s.syn.wscale)
	r.add(ruleInvalid, verdictDrop, ctState(expr.CtStateBitINVALID)...)
	// Neighbour discovery, router adverts and MLD queries from anyone,
	// blocked or not: XDP passes them too, and the link needs them.
	r.add(ruleICMP, verdictAccept, concat(l4proto(unix.IPPROTO_ICMPV6), icmpType(),
		r.anonLookup(nftables.TypeICMP6Type, icmpv6Essentials, false))...)
	// Management ranges reach their ports over TCP and UDP, as in XDP,
	// before the blocklist: a forged scan cannot lock the admins out.
	for _, v6 := range []bool{false, true} {
		for _, proto := range []byte{unix.IPPROTO_TCP, unix.IPPROTO_UDP} {
			r.add(ruleManagement, verdictAccept, concat(l4proto(proto), saddr(v6), dport(concatPortReg(v6)),
				lookup(r.sets[setName(setManagement, v6)], false))...)
		}
	}
	// What is left of a listener port from a source that is not admitted
	// (an ACK, a tracked SYN) goes here, before the blocklist.
	r.notAdmitted("")
	r.blockedRule("")
	if s.strict {
		// Echo requests from admitted sources only, as the XDP layer
		// decides them.
		r.echoAdmitted("")
	}
	if s.scan.DistinctPorts > 0 {
		for _, v6 := range []bool{false, true} {
			pairs := r.sets[setName(setScanPorts, v6)]
			// A bare SYN opens a flow; counted as XDP counts it, and
			// never from a management range. The source that finds its
			// bucket empty goes to scan_block, which drops the SYN even
			// when the blocked set is full.
			e := concat(l4proto(unix.IPPROTO_TCP), tcpFlagsSYN(), ctState(expr.CtStateBitNEW),
				saddr(v6), lookup(r.sets[setName(setMgmtSrc, v6)], true),
				r.srcKey(v6), dport(concatPortReg(v6)),
				lookup(pairs, true), dynset(pairs, unix.NFT_DYNSET_OP_ADD, 0),
				// Register 1 still holds the source key.
				dynset(r.sets[setName(setScanCount, v6)], unix.NFT_DYNSET_OP_UPDATE, 0,
					&expr.Limit{Type: expr.LimitTypePkts, Rate: s.refill.Rate, Unit: expr.LimitTime(s.refill.Unit.Seconds()),
						Burst: s.refill.Burst, Over: true}))
			r.addTail("", []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chainScanBlock}}, e...)
		}
	}
	if s.strict {
		r.add(ruleStrictDrop, verdictDrop)
	}
}

// buildScanBlock adds the regular chain the scan rule jumps to: the source
// goes into its blocked set and the SYN is dropped; when the set is full
// (forged scans can fill it) the SYN is dropped all the same and counted
// as blocklist_full.
func (s *spec) buildScanBlock(r *ruleBuilder) {
	r.chain(&nftables.Chain{Name: chainScanBlock, Table: ourTable()})
	for _, v6 := range []bool{false, true} {
		r.add(ruleScan, verdictDrop, concat(r.srcKey(v6),
			dynset(r.sets[setName(setBlocked, v6)], unix.NFT_DYNSET_OP_ADD, s.blockFor()))...)
	}
	r.add(ruleFull, verdictDrop)
}

// buildOutput adds the output chain. A connection to a listener port
// starts there: once synproxy has checked the cookie in the client's ACK,
// it sends the SYN of the real handshake from the client's address through
// the output hook (to the local listener or, forwarded, to the internal
// host). So the per-source rate and connection cap count only sources that
// proved their address, and a forged SYN costs a tenant nothing. Over
// either limit the SYN is dropped; the client's retransmission proves
// itself again and gets through once the limit allows (or gives up).
func (s *spec) buildOutput(r *ruleBuilder) {
	r.chain(s.baseChain(chainOutput, nftables.ChainHookOutput, chainPriority, nftables.ChainPolicyAccept))
	s.admission(r, "", true)
	if s.forward {
		s.admission(r, fwdPrefix, false)
	}
}

// admission adds the per-source limits of proven connections to the
// output chain: to the appliance's own listeners (local) or to routed
// ones. The counters are named prefix plus the rule. Both update the same
// rate_* and conns_* sets, so a source has one budget for the appliance's
// listeners and the routed ones together.
func (s *spec) admission(r *ruleBuilder, prefix string, local bool) {
	proven := func() []expr.Any {
		return concat(r.listenerSYN(), ctState(expr.CtStateBitNEW), fibSaddrLocal(false), fibDaddrLocal(local))
	}
	if s.rate.PerSecond > 0 {
		burst := s.rate.Burst
		if burst == 0 {
			burst = s.rate.PerSecond
		}
		for _, v6 := range []bool{false, true} {
			r.add(prefix+ruleRateLimited, verdictDrop, concat(proven(), r.srcKey(v6), dynset(r.sets[setName(setRate, v6)], unix.NFT_DYNSET_OP_UPDATE, 0,
				&expr.Limit{Type: expr.LimitTypePkts, Rate: uint64(s.rate.PerSecond), Unit: expr.LimitTimeSecond, Burst: burst, Over: true}))...)
		}
	}
	if s.maxConns > 0 {
		for _, v6 := range []bool{false, true} {
			r.add(prefix+ruleConnLimited, verdictDrop, concat(proven(), r.srcKey(v6), dynset(r.sets[setName(setConns, v6)], unix.NFT_DYNSET_OP_ADD, 0,
				&expr.Connlimit{Count: s.maxConns, Flags: expr.NFT_CONNLIMIT_F_INV}))...)
		}
	}
	r.add(prefix+ruleAdmitted, verdictAccept, proven()...)
}

// buildForward adds the forward chain for flows routed through the
// appliance to listener ports of internal hosts: synproxy and admission as
// for the appliance's own listeners. There is no loopback, management or
// scan rule: management reaches the appliance itself, and scan detection
// stays with the input chain (a source it blocks is dropped here too).
// Flows that enter on another interface than the outside one are internal
// and pass.
func (s *spec) buildForward(r *ruleBuilder) {
	r.chain(s.baseChain(chainForward, nftables.ChainHookForward, chainPriority, s.policy()))
	s.strictProtocols(r, fwdPrefix)
	r.add(fwdPrefix+ruleEstablished, verdictAccept, ctState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED)...)
	r.synProxy(fwdPrefix, s.fromOutside(), s.syn.wscaleFwd)
	r.add(fwdPrefix+ruleInvalid, verdictDrop, ctState(expr.CtStateBitINVALID)...)
	if s.outside != "" {
		r.add(ruleFwdInternal, verdictAccept, iifnameNot(s.outside)...)
	}
	r.notAdmitted(fwdPrefix)
	r.blockedRule(fwdPrefix)
	if s.strict {
		// Echo requests to internal hosts from admitted sources only, as
		// in the input chain and XDP.
		r.echoAdmitted(fwdPrefix)
		r.add(fwdPrefix+ruleStrictDrop, verdictDrop)
	}
}

// synProxy adds the rules that hand a connection to a listener port to
// synproxy, which answers the SYN with a SYN cookie and opens the real
// connection only when the client's ACK returns the cookie: the bare SYN
// that the prerouting chain left untracked, and the handshake's ACK, which
// conntrack calls invalid (nf_conntrack_tcp_loose=0) or new (=1: a
// connection picked up midway), so it works with either setting. Only
// admitted sources get there; the rest fall through to not_admitted.
//
// The kernel's synproxy checks an IPv6 segment's checksum as if it were
// IPv4 (nft_synproxy calls nf_ip_checksum for both families), which passes
// only where the checksum is marked verified already (CHECKSUM_UNNECESSARY,
// as most NICs and GRO hand segments up, or a local sender's); a NIC that
// hands up the full sum instead (CHECKSUM_COMPLETE: Mellanox's) loses its
// IPv6 connections here. Leaving the IPv6 SYN tracked, so that conntrack
// verifies the checksum first, was tried: under load the SYN's conntrack
// entry then outlived it, which is the state a forged SYN must not leave.
func (r *ruleBuilder) synProxy(prefix string, from []expr.Any, wscale uint8) {
	for _, v6 := range []bool{false, true} {
		mss := r.spec.syn.mss4
		if v6 {
			mss = r.spec.syn.mss6
		}
		proxy := []expr.Any{&expr.SynProxy{Mss: mss, Wscale: wscale, MssValueSet: true, WscaleValueSet: true, Timestamp: true, SackPerm: true}}
		admitted := concat(saddr(v6), lookup(r.sets[setName(setAdmitted, v6)], false))
		r.addTail(prefix+ruleSynProxy, proxy, concat(from, r.listenerSYN(), ctState(expr.CtStateBitUNTRACKED), admitted)...)
		r.addTail(prefix+ruleSynProxy, proxy, concat(from, r.listener(), tcpFlagsACK(),
			ctState(expr.CtStateBitINVALID|expr.CtStateBitNEW), admitted)...)
	}
}

// notAdmitted drops what reaches a listener port from a source outside the
// admitted ranges.
func (r *ruleBuilder) notAdmitted(prefix string) {
	for _, v6 := range []bool{false, true} {
		r.add(prefix+ruleNotAdmitted, verdictDrop, concat(r.listener(), saddr(v6), lookup(r.sets[setName(setAdmitted, v6)], true))...)
	}
}

// listener matches TCP to a listener port.
func (r *ruleBuilder) listener() []expr.Any {
	return concat(l4proto(unix.IPPROTO_TCP), dport(1), lookup(r.sets[setPorts], false))
}

// listenerSYN matches a bare SYN to a listener port.
func (r *ruleBuilder) listenerSYN() []expr.Any {
	return concat(r.listener(), tcpFlagsSYN())
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

// strictProtocols adds, in strict mode with XDP on, the rules that drop on
// XDP's interface what the XDP program drops there whatever the flow's
// state, before the established rule accepts it: an IP protocol other than
// TCP, UDP and the family's ICMP (XDP asks conntrack about UDP only: its
// lookup takes TCP and UDP), and ICMP other than errors and echo replies
// from a source that is not admitted. The two layers so agree on an answer
// over GRE or ESP to the appliance's own flow: strict mode has none there.
func (s *spec) strictProtocols(r *ruleBuilder, prefix string) {
	if !s.strict || s.xdp == "" {
		return
	}
	for _, v6 := range []bool{false, true} {
		icmp, answers := byte(unix.IPPROTO_ICMP), icmpAnswers
		if v6 {
			icmp, answers = unix.IPPROTO_ICMPV6, icmpv6Answers
		}
		in := concat(iifname(s.xdp), nfproto(v6))
		r.add(prefix+ruleStrictProto, verdictDrop, concat(in, l4protoLoad(),
			r.anonLookup(nftables.TypeInetProto, []byte{unix.IPPROTO_TCP, unix.IPPROTO_UDP, icmp}, true))...)
		key := nftables.TypeICMPType
		if v6 {
			key = nftables.TypeICMP6Type
		}
		r.add(prefix+ruleStrictProto, verdictDrop, concat(in, l4proto(icmp), icmpType(), r.anonLookup(key, answers, true),
			saddr(v6), lookup(r.sets[setName(setAdmitted, v6)], true))...)
	}
}

// icmpAnswers and icmpv6Answers are the ICMP types the XDP program passes
// from anyone in strict mode as answers to the appliance's own traffic
// (errors and echo replies), and, for ICMPv6, the link's own messages
// (MLD, router and neighbour discovery, redirects) it always passes.
var (
	icmpAnswers   = []byte{0, 3, 11, 12}
	icmpv6Answers = []byte{1, 2, 3, 4, 129, 130, 131, 132, 133, 134, 135, 136, 137, 143}
)

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
	b.addTail(name, []expr.Any{&expr.Verdict{Kind: v}}, match...)
}

// addTail appends a rule: match expressions, the rule's named counter
// (none for name ""), then tail, a verdict or a statement.
func (b *ruleBuilder) addTail(name string, tail []expr.Any, match ...expr.Any) {
	exprs := slices.Clip(match)
	if name != "" {
		exprs = append(exprs, &expr.Objref{Type: int(nftables.ObjTypeCounter), Name: name})
		if !slices.Contains(b.rs.counters, name) {
			b.rs.counters = append(b.rs.counters, name)
		}
	}
	exprs = append(exprs, tail...)
	tag := ruleTag(len(b.rs.rules), exprs)
	b.rs.rules = append(b.rs.rules, &nftables.Rule{
		Table: b.rs.table, Chain: b.cur, Exprs: exprs,
		UserData: userdata.Append(nil, tagType, tag),
	})
	b.rs.tags = append(b.rs.tags, tag)
}

// anonLookup creates a constant anonymous set (nft's inline { a, b }).
// With invert, it matches a value not in the set.
func (b *ruleBuilder) anonLookup(key nftables.SetDatatype, vals []byte, invert bool) []expr.Any {
	*b.nextID++
	set := &nftables.Set{Table: b.rs.table, ID: *b.nextID, Name: "__set%d", Anonymous: true, Constant: true, KeyType: key}
	elems := make([]nftables.SetElement, len(vals))
	for i, v := range vals {
		elems[i] = nftables.SetElement{Key: []byte{v}}
	}
	b.rs.anon = append(b.rs.anon, anonSet{set, elems})
	return lookup(set, invert)
}
