package nft

import (
	"encoding/binary"
	"hash/fnv"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The expressions the rules are built of, in the registers nft itself uses.

// ruleTag hashes a rule's position and expressions.
func ruleTag(pos int, exprs []expr.Any) []byte {
	h := fnv.New64a()
	var p [8]byte
	binary.BigEndian.PutUint64(p[:], uint64(pos))
	h.Write(p[:])
	for _, e := range exprs {
		b, err := expr.Marshal(byte(nftables.TableFamilyINet), e)
		if err != nil {
			// Marshal fails only for expressions we never build; the
			// Flush reports the same error.
			continue
		}
		h.Write(b)
	}
	return h.Sum(nil)
}

func concat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func cmpEq(data []byte) []expr.Any {
	return []expr.Any{&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: data}}
}

func iifname(name string) []expr.Any {
	return concat([]expr.Any{&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1}}, cmpEq([]byte(name+"\x00")))
}

func iifnameNot(name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte(name + "\x00")},
	}
}

func l4proto(p byte) []expr.Any {
	return concat(l4protoLoad(), cmpEq([]byte{p}))
}

// l4protoLoad loads the transport protocol into register 1.
func l4protoLoad() []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}}
}

func nfproto(v6 bool) []expr.Any {
	p := byte(unix.NFPROTO_IPV4)
	if v6 {
		p = unix.NFPROTO_IPV6
	}
	return concat([]expr.Any{&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1}}, cmpEq([]byte{p}))
}

// saddr loads the source address into register 1, behind the family check
// an inet table needs.
func saddr(v6 bool) []expr.Any {
	off, n := uint32(12), uint32(4)
	if v6 {
		off, n = 8, 16
	}
	return append(nfproto(v6), &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n})
}

// dport loads the transport destination port into reg.
func dport(reg uint32) []expr.Any {
	return []expr.Any{&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}}
}

// concatPortReg is the register right behind the source address in a
// concatenation: the second 32-bit register for IPv4 (nft's reg 9), the
// second 128-bit one for IPv6.
func concatPortReg(v6 bool) uint32 {
	if v6 {
		return 2
	}
	return 9
}

// tcpFlagsSYN matches a bare SYN (SYN set, ACK clear): a packet that
// opens a flow. It needs the l4proto check before it.
func tcpFlagsSYN() []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x12}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0x02}},
	}
}

// tcpFlagsACK matches the last segment of a handshake: ACK without SYN
// or RST. It needs the l4proto check before it.
func tcpFlagsACK() []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x16}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0x10}},
	}
}

// fibDaddrLocal matches a destination that is (or with local false, is
// not) an address of the appliance: fib daddr type local.
func fibDaddrLocal(local bool) []expr.Any {
	return fibType(&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true}, local)
}

// fibSaddrLocal is fibDaddrLocal for the source: fib saddr type local.
func fibSaddrLocal(local bool) []expr.Any {
	return fibType(&expr.Fib{Register: 1, FlagSADDR: true, ResultADDRTYPE: true}, local)
}

func fibType(f *expr.Fib, local bool) []expr.Any {
	op := expr.CmpOpEq
	if !local {
		op = expr.CmpOpNeq
	}
	return []expr.Any{f, &expr.Cmp{Op: op, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)}}
}

func icmpType() []expr.Any {
	return []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1}}
}

func ctState(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

func lookup(set *nftables.Set, invert bool) []expr.Any {
	return []expr.Any{&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID, Invert: invert}}
}

func dynset(set *nftables.Set, op uint32, timeout time.Duration, exprs ...expr.Any) []expr.Any {
	return []expr.Any{&expr.Dynset{SrcRegKey: 1, SetName: set.Name, SetID: set.ID, Operation: op, Timeout: timeout, Exprs: exprs}}
}
