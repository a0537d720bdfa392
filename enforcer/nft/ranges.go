package nft

import (
	"net/netip"
	"slices"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/google/nftables"
)

// addrRange is an inclusive address range. The admitted sets hold ranges,
// not prefixes: adjacent prefixes that do not merge into one prefix (a /24
// followed by a /23) would otherwise give an end element and a start element
// with the same key, and fewer elements load faster.
type addrRange struct{ from, to netip.Addr }

// toRanges turns sorted, disjoint prefixes into sorted ranges, joining
// neighbours.
func toRanges(prefixes []netip.Prefix) []addrRange {
	out := make([]addrRange, 0, len(prefixes))
	for _, p := range prefixes {
		r := addrRange{p.Addr(), policy.LastAddr(p)}
		if n := len(out); n > 0 && out[n-1].to.Next() == r.from {
			out[n-1].to = r.to
			continue
		}
		out = append(out, r)
	}
	return out
}

// diffRanges returns the ranges only in old (to delete) and only in next (to
// add). Both inputs are sorted; a range that changed shape is deleted and
// added again, which the kernel does inside the same transaction.
func diffRanges(old, next []addrRange) (del, add []addrRange) {
	i, j := 0, 0
	for i < len(old) && j < len(next) {
		switch c := compareRange(old[i], next[j]); {
		case c == 0:
			i++
			j++
		case c < 0:
			del = append(del, old[i])
			i++
		default:
			add = append(add, next[j])
			j++
		}
	}
	del = append(del, old[i:]...)
	add = append(add, next[j:]...)
	return del, add
}

func compareRange(a, b addrRange) int {
	if c := a.from.Compare(b.from); c != 0 {
		return c
	}
	return a.to.Compare(b.to)
}

// intervalElements encodes ranges for a non-concatenated interval set: a
// start element at from and an end element at to+1. A range that reaches the
// top of the address space has no end element, as nft itself does it.
func intervalElements(rs []addrRange) []nftables.SetElement {
	out := make([]nftables.SetElement, 0, 2*len(rs))
	if len(rs) == 0 {
		return out
	}
	// One backing array for all keys: 200k small allocations are most of
	// the user time of a full replace otherwise.
	buf := make([]byte, 0, 2*rs[0].from.BitLen()/8*len(rs))
	for _, r := range rs {
		var k []byte
		buf, k = appendKey(buf, r.from)
		out = append(out, nftables.SetElement{Key: k})
		if end := r.to.Next(); end.IsValid() {
			buf, k = appendKey(buf, end)
			out = append(out, nftables.SetElement{Key: k, IntervalEnd: true})
		}
	}
	return out
}

// appendKey appends a's bytes (4 or 16) to buf and returns buf and the key,
// a slice of it that appending to buf cannot overwrite.
func appendKey(buf []byte, a netip.Addr) ([]byte, []byte) {
	start := len(buf)
	if a.Is4() {
		b := a.As4()
		buf = append(buf, b[:]...)
	} else {
		b := a.As16()
		buf = append(buf, b[:]...)
	}
	return buf, buf[start:len(buf):len(buf)]
}

// forIntervalChunks encodes ranges as intervalElements does, one message's
// worth at a time (chunks as chunkElements cuts them) into buffers reused
// for every chunk, and calls f with each: a full replace of 100k ranges then
// builds no 200k-element slice for the collector to clear and scan. f must
// not keep the chunk; SetAddElements copies it into the message.
func forIntervalChunks(rs []addrRange, f func([]nftables.SetElement) error) error {
	var elems []nftables.SetElement
	var keys []byte
	size := 0
	key := func(a netip.Addr) []byte {
		var k []byte
		keys, k = appendKey(keys, a)
		return k
	}
	flush := func() error {
		if len(elems) == 0 {
			return nil
		}
		err := f(elems)
		elems, keys, size = elems[:0], keys[:0], 0
		return err
	}
	var zero [16]byte
	for _, r := range rs {
		w := zero[:r.from.BitLen()/8]
		end := r.to.Next()
		n := elementSize(nftables.SetElement{Key: w})
		if end.IsValid() {
			n += elementSize(nftables.SetElement{Key: w, IntervalEnd: true})
		}
		if size+n > maxElemBytes {
			if err := flush(); err != nil {
				return err
			}
		}
		elems = append(elems, nftables.SetElement{Key: key(r.from)})
		if end.IsValid() {
			elems = append(elems, nftables.SetElement{Key: key(end), IntervalEnd: true})
		}
		size += n
	}
	return flush()
}

// maxElemBytes bounds the encoded element list of one NEWSETELEM message:
// the list is one netlink attribute, whose length field has 16 bits.
const maxElemBytes = 60000

// elementSize is the encoded size of one element as makeElemList in
// google/nftables writes it: the element nest, the key nest with its value,
// an optional key-end nest, and the flags attribute of an interval end.
func elementSize(e nftables.SetElement) int {
	n := 4 + 4 + 4 + align4(len(e.Key))
	if len(e.KeyEnd) > 0 {
		n += 4 + 4 + align4(len(e.KeyEnd))
	}
	if e.IntervalEnd {
		n += 8
	}
	if e.Timeout != 0 {
		n += 12
	}
	return n
}

func align4(n int) int { return (n + 3) &^ 3 }

// chunkElements splits elements so that each chunk encodes below
// maxElemBytes. An interval's start and end element stay in one chunk, so
// every message describes whole ranges. With 24 bytes per IPv4 and 36 per
// IPv6 element that is about 2,500 IPv4 or 1,660 IPv6 elements a message:
// 10k elements would not fit the 16-bit length of the element list.
func chunkElements(elems []nftables.SetElement) [][]nftables.SetElement {
	var chunks [][]nftables.SetElement
	start, size := 0, 0
	for i, e := range elems {
		s := elementSize(e)
		if size+s > maxElemBytes && i > start && !e.IntervalEnd {
			chunks = append(chunks, elems[start:i])
			start, size = i, 0
		}
		size += s
	}
	if start < len(elems) {
		chunks = append(chunks, elems[start:])
	}
	return chunks
}

// mgmtEntry is one element of a management set: a range of sources and one
// port, matched together (ip saddr . tcp/udp dport), so a range reaches only
// its own ports.
type mgmtEntry struct {
	r    addrRange
	port uint16
}

func mgmtEntries(ms []policy.Management, want4 bool) []mgmtEntry {
	var out []mgmtEntry
	for _, m := range ms {
		p := m.Prefix.Masked()
		if p.Addr().Is4() != want4 {
			continue
		}
		for _, port := range m.Ports {
			out = append(out, mgmtEntry{addrRange{p.Addr(), policy.LastAddr(p)}, port})
		}
	}
	slices.SortFunc(out, func(a, b mgmtEntry) int {
		if c := compareRange(a.r, b.r); c != 0 {
			return c
		}
		return int(a.port) - int(b.port)
	})
	return slices.Compact(out)
}

// mgmtSources returns the management ranges of one family, without ports,
// merged where they overlap or touch (an interval set takes no overlaps).
func mgmtSources(ms []policy.Management, want4 bool) []addrRange {
	var rs []addrRange
	for _, m := range ms {
		p := m.Prefix.Masked()
		if p.Addr().Is4() == want4 {
			rs = append(rs, addrRange{p.Addr(), policy.LastAddr(p)})
		}
	}
	slices.SortFunc(rs, compareRange)
	var out []addrRange
	for _, r := range rs {
		if n := len(out); n > 0 {
			last := &out[n-1]
			if next := last.to.Next(); !next.IsValid() || r.from.Compare(next) <= 0 {
				if r.to.Compare(last.to) > 0 {
					last.to = r.to
				}
				continue
			}
		}
		out = append(out, r)
	}
	return out
}

// concatKey is an address followed by a port padded to a 32-bit register,
// the layout of an ipv4_addr . inet_service (or ipv6_addr . inet_service) key.
func concatKey(a netip.Addr, port uint16) []byte {
	b := a.AsSlice()
	return append(b, byte(port>>8), byte(port), 0, 0)
}

// mgmtElements encodes management entries for a concatenated interval set,
// where every element carries an inclusive key end.
func mgmtElements(es []mgmtEntry) []nftables.SetElement {
	out := make([]nftables.SetElement, 0, len(es))
	for _, e := range es {
		out = append(out, nftables.SetElement{
			Key:    concatKey(e.r.from, e.port),
			KeyEnd: concatKey(e.r.to, e.port),
		})
	}
	return out
}

func portElements(ports []uint16) []nftables.SetElement {
	out := make([]nftables.SetElement, 0, len(ports))
	for _, p := range ports {
		out = append(out, nftables.SetElement{Key: []byte{byte(p >> 8), byte(p)}})
	}
	return out
}
